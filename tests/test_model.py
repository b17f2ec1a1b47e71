import json
import logging

import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel, ModelConfig

TEXTS = ["the cat sat on the mat", "", "a man is playing a guitar in the park", "hello"]


def _model(backbone, **kw):
    kw.setdefault("dtype", "float32")
    return EmbeddingModel(ModelConfig(backbone=backbone, **kw))


def test_encode_shapes_order_and_normalisation(tiny_llama):
    m = _model(tiny_llama, pooling="mean")
    emb = m.encode(TEXTS, batch_size=2)
    assert emb.dtype == np.float32 and emb.shape == (4, m.embedding_dim)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert np.allclose(emb[2], m.encode([TEXTS[2]])[0], atol=1e-5)  # sorting by length keeps input order
    assert m.encode("hello").shape == (m.embedding_dim,)
    assert m.encode([]).shape == (0, m.embedding_dim)


def test_eos_is_appended_and_instruction_prefixed(tiny_llama):
    m = _model(tiny_llama)
    batch = m.tokenize(["hello"], instruction="Retrieve a passage")
    ids = batch["input_ids"][0].tolist()
    assert ids[-1] == m.tokenizer.eos_token_id
    assert "Instruct: Retrieve a passage\nQuery: hello" in m.tokenizer.decode(ids)
    assert not np.allclose(m.encode(["hello"]), m.encode(["hello"], instruction="Retrieve a passage"))


def test_truncation_warns_once_with_count(tiny_llama, caplog):
    m = _model(tiny_llama, max_length=8)
    with caplog.at_level(logging.WARNING, logger="poolattn.model"):
        m.encode(["word " * 50, "word " * 40, "short"], batch_size=1)
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3")
    assert m.tokenize(["word " * 50])["input_ids"].shape[1] == 8


@pytest.mark.parametrize("pooling", ["eos", "latent", "multilayer"])
def test_save_load_roundtrip_identical(tiny_llama, tmp_path, pooling):
    m = _model(tiny_llama, pooling=pooling, attention="bidirectional",
               pooling_kwargs={"num_latents": 4, "num_heads": 4} if pooling != "eos" else {})
    m.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # make LoRA non-trivial (B starts at zero)
        for n, p in m.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    folder = m.save_pretrained(tmp_path / "model")
    assert {p.name for p in folder.iterdir()} >= {"poolattn_config.json", "pooler.safetensors", "adapter"}
    loaded = EmbeddingModel.from_pretrained(folder)
    a, b = m.encode(TEXTS), loaded.encode(TEXTS)
    assert np.abs(a - b).max() < 1e-6
    assert loaded.fingerprint() == m.fingerprint()
    assert loaded.config.attention == "bidirectional" and loaded.config.lora.r == 4

    # An inference load keeps the vectors (fp32 backbone: nothing to cast) and the fingerprint, and refuses to save.
    inference = EmbeddingModel.from_pretrained(folder, inference=True)
    assert np.abs(inference.encode(TEXTS) - a).max() < 1e-6
    assert inference.fingerprint() == m.fingerprint()
    with pytest.raises(ValueError, match="inference"):
        inference.save_pretrained(tmp_path / "again")


def test_inference_load_casts_lora_to_a_bf16_backbone(tiny_llama, tmp_path):
    m = _model(tiny_llama, pooling="mean", dtype="bfloat16")
    m.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in m.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
    folder = m.save_pretrained(tmp_path / "model")
    trained = EmbeddingModel.from_pretrained(folder)
    fast = EmbeddingModel.from_pretrained(folder, inference=True)
    dtypes = lambda mm: {p.dtype for n, p in mm.backbone.named_parameters() if "lora_" in n}  # noqa: E731
    assert dtypes(trained) == {torch.float32} and dtypes(fast) == {torch.bfloat16}
    assert fast.fingerprint() == trained.fingerprint()
    cos = (fast.encode(TEXTS) * trained.encode(TEXTS)).sum(1)
    assert cos.min() > 0.99


def test_fingerprint_changes_with_weights_and_design(tiny_llama):
    m = _model(tiny_llama, pooling="latent", pooling_kwargs={"num_latents": 4, "num_heads": 4})
    f = m.fingerprint()
    with torch.no_grad():
        m.pooler.latents.add_(1.0)
    assert m.fingerprint() != f
    assert _model(tiny_llama).fingerprint() != _model(tiny_llama, attention="bidirectional").fingerprint()


def test_mismatched_weights_give_clear_error(tiny_llama, tmp_path):
    m = _model(tiny_llama, pooling="latent", pooling_kwargs={"num_latents": 4, "num_heads": 4})
    folder = m.save_pretrained(tmp_path / "model")
    meta = json.loads((folder / "poolattn_config.json").read_text())
    meta["pooler"]["num_latents"] = 8
    (folder / "poolattn_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match"):
        EmbeddingModel.from_pretrained(folder)


def test_unknown_names_list_valid_ones(tiny_llama):
    with pytest.raises(ValueError, match="multilayer"):
        ModelConfig(pooling="cls")
    with pytest.raises(ValueError, match="bidirectional"):
        ModelConfig(attention="sideways")


def test_save_is_atomic(tiny_llama, tmp_path, monkeypatch):
    m = _model(tiny_llama)
    folder = m.save_pretrained(tmp_path / "model")
    before = sorted(p.name for p in folder.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(m.tokenizer, "save_pretrained", boom)
    with pytest.raises(RuntimeError):
        m.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
