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
    with caplog.at_level(logging.WARNING, logger="poolattn.tokenization"):
        m.encode(["word " * 50, "word " * 40, "short"], batch_size=1)
    msgs = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3")
    assert m.tokenize(["word " * 50])["input_ids"].shape[1] == 8


@pytest.mark.parametrize("pooling, kwargs", [("eos", {}), ("latent", {"num_latents": 4, "num_heads": 4}),
                                            ("multilayer", {"num_latents": 4, "num_heads": 4}),
                                            ("mean", {"layers": "0..2"})])
def test_save_load_roundtrip_identical(tiny_llama, tmp_path, pooling, kwargs):
    m = _model(tiny_llama, pooling=pooling, attention="bidirectional", pooling_kwargs=kwargs)
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
    assert loaded.pooler.get_config() == m.pooler.get_config()
    assert all(loaded.config.pooling_kwargs[k] == v for k, v in kwargs.items())  # saved with its defaults

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
    dtypes = lambda mm: {p.dtype for n, p in mm.backbone.named_parameters() if "lora_" in n}
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


def test_mean_over_layers_in_the_model(tiny_llama):
    """layers: the backbone's own hidden states (0 = the embeddings) averaged as asked, through encode's path
    (sorting, padding, the shared instruction run once); without it, the plain mean model's vectors to the bit."""
    plain, last = _model(tiny_llama, pooling="mean"), _model(tiny_llama, pooling="mean", pooling_kwargs={"layers": [-1]})
    instr = "Retrieve semantically similar text."
    for kw in ({}, {"instruction": instr}):
        assert np.array_equal(plain.encode(TEXTS, batch_size=3, **kw), last.encode(TEXTS, batch_size=3, **kw))
    ranged = _model(tiny_llama, pooling="mean", pooling_kwargs={"layers": "0..1"})
    batch = ranged.tokenize([TEXTS[2]], instruction=instr)
    with torch.no_grad():
        hs = ranged.backbone(**batch, output_hidden_states=True).hidden_states
    want = torch.nn.functional.normalize((hs[0][0].mean(0) + hs[1][0].mean(0)) / 2, dim=0).numpy()
    got = ranged.encode(TEXTS, instruction=instr)
    assert np.abs(got[2] - want).max() < 1e-5
    assert np.abs(got - plain.encode(TEXTS, instruction=instr)).max() > 1e-3
    prints = {plain.fingerprint(), ranged.fingerprint(),
              _model(tiny_llama, pooling="mean", pooling_kwargs={"layers": "1..2"}).fingerprint()}
    assert len(prints) == 3  # the embedding cache keeps the layer ranges apart


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


def test_one_eos_when_the_tokenizer_already_appends_it(tiny_llama):
    from tokenizers.processors import TemplateProcessing

    m = _model(tiny_llama)
    eos = m.tokenizer.eos_token_id
    m.tokenizer._tokenizer.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    assert m.tokenizer("hello")["input_ids"][-1] == eos  # this tokenizer adds EOS itself
    ids = m.tokenize(["hello", "a man is playing a guitar"])
    for row, mask in zip(ids["input_ids"].tolist(), ids["attention_mask"].tolist()):
        real = [t for t, k in zip(row, mask) if k]
        assert real[-1] == eos and real.count(eos) == 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_mask_instruction_pools_the_same_tokens_whatever_the_instruction(tiny_llama, side):
    m = _model(tiny_llama, pooling="mean", mask_instruction=True, padding_side=side)
    texts = ["a man is playing a guitar", "hello"]
    pooled = []
    for instruction in ("Find it", "Retrieve the passage that answers this question about dogs and cats in parks"):
        batch = m.tokenize(texts, instruction=instruction)
        assert (batch["pool_mask"].sum(1) < batch["attention_mask"].sum(1)).all()
        pooled.append([row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["pool_mask"])])
        # the pooled tokens decode to the text itself (+ EOS): no instruction token, no text token lost
        for ids, text in zip(pooled[-1], texts):
            assert m.tokenizer.decode(ids[:-1]).strip() == text and ids[-1] == m.tokenizer.eos_token_id
    assert pooled[0] == pooled[1]
    # the pooler sees the pool mask: a mean over the text tokens' last-layer states
    batch = m.tokenize(texts[:1], instruction="Find it")
    with torch.no_grad():
        states = m.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        expected = torch.nn.functional.normalize(states[0][batch["pool_mask"][0].bool()].mean(0), dim=-1)
        assert torch.allclose(m(**batch)[0], expected, atol=1e-5)
    plain = _model(tiny_llama, pooling="mean")
    assert "pool_mask" not in plain.tokenize(texts, instruction="Find it")


def test_per_text_instructions(tiny_llama):
    m = _model(tiny_llama)
    assert m.format(["a", "b"], ["Do X", None]) == ["Instruct: Do X\nQuery: a", "b"]
    with pytest.raises(ValueError, match="2 instructions for 3 texts"):
        m.format(["a", "b", "c"], ["x", None])


def test_legacy_folders_load_as_poolattn0(tiny_llama, tmp_path):
    """A folder saved by poolattn 0.1 (no preset; weights not under block.) loads as the same function."""
    from safetensors.torch import load_file, save_file

    m = _model(tiny_llama, pooling="multilayer", pooling_kwargs={"preset": "poolattn0", "num_latents": 4})
    folder = m.save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "poolattn_config.json").read_text())
    meta["pooler"] = {"name": "multilayer", "layers": "all", "num_latents": 4, "num_heads": 8,
                      "layer_embedding": True, "ff_mult": 2, "dropout": 0.0}
    meta["config"]["pooling_kwargs"] = {}
    (folder / "poolattn_config.json").write_text(json.dumps(meta))
    state = {k.removeprefix("block."): v for k, v in load_file(str(folder / "pooler.safetensors")).items()}
    save_file(state, str(folder / "pooler.safetensors"))
    loaded = EmbeddingModel.from_pretrained(folder)
    assert loaded.pooler.get_config()["preset"] == "poolattn0"
    assert np.allclose(loaded.encode(TEXTS), m.encode(TEXTS), atol=1e-6)


def test_saved_pooling_cannot_be_overridden_but_attention_and_same_values_can(tiny_llama, tmp_path):
    """Issue 26 row 9: a saved folder's pooler weights belong to its pooling; one clear usage error (exit 2) instead
    of "takes no options" / "does not match"; the same value, attention, dtype and max_length are fine."""
    from typer.testing import CliRunner

    from poolattn.cli import app
    from poolattn.errors import UserError

    multi = _model(tiny_llama, pooling="multilayer", pooling_kwargs={"num_latents": 4, "num_heads": 4})
    folder = multi.save_pretrained(tmp_path / "multi")
    eos = _model(tiny_llama).save_pretrained(tmp_path / "eos")
    for saved, other, was in ((folder, "eos", "multilayer"), (eos, "multilayer", "eos")):
        with pytest.raises(UserError, match=f"trained with pooling '{was}'; --pooling cannot change it") as err:
            EmbeddingModel.from_pretrained(saved, pooling=other)
        assert err.value.exit_code == 2
    same = EmbeddingModel.from_pretrained(folder, pooling="multilayer", max_length=16, dtype="float32")
    assert np.allclose(same.encode(TEXTS), multi.encode(TEXTS), atol=1e-5)
    assert EmbeddingModel.from_pretrained(folder, attention="bidirectional").config.attention == "bidirectional"
    (tmp_path / "t.txt").write_text("hello\n")
    res = CliRunner().invoke(app, ["encode", "-i", str(tmp_path / "t.txt"), "-o", str(tmp_path / "t.npy"),
                                   "--model", str(folder), "--pooling", "eos"])
    assert res.exit_code == 2 and "--pooling cannot change it" in res.output.splitlines()[0], res.output
    assert not (tmp_path / "t.npy").exists()


def test_lora_model_loads_encodes_and_saves_without_warnings(tiny_llama, tmp_path):
    """Issue 26 row 11: peft's read of transformers' deprecated `is_gradient_checkpointing` printed a FutureWarning
    (and a bare `warnings.warn(` line) on every load of a LoRA model."""
    import warnings

    m = _model(tiny_llama, max_length=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.add_lora(r=4, alpha=8, dropout=0.0)
        folder = m.save_pretrained(tmp_path / "lora")
        loaded = EmbeddingModel.from_pretrained(folder, inference=True, device="cpu")
        loaded.encode(TEXTS)
    assert [str(w.message) for w in caught] == []
    with warnings.catch_warnings(record=True) as caught:  # the filter is narrow: other warnings still show
        warnings.simplefilter("always")
        from poolattn.model import quiet_peft

        with quiet_peft():
            warnings.warn("something else", FutureWarning)
    assert [str(w.message) for w in caught] == ["something else"]
