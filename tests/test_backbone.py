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
