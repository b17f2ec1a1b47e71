"""Echo embeddings (ModelConfig.echo, poolattn.echo): the text twice in the reference's template, the second copy
pooled; a config error under bidirectional attention; exact prefix reuse; saved, trained, exported and served."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from poolattn import EmbeddingModel, ModelConfig
from poolattn.cli import app
from poolattn.echo import DOCUMENT, QUERY_AGAIN
from poolattn.errors import UserError
from poolattn.evaluation.instructions import INSTRUCTIONS
from poolattn.experiment import Design, ExperimentConfig
from poolattn.export import export_model, is_own_export
from poolattn.export.check import encode_without_poolattn
from poolattn.serve import ServeSettings, create_app
from poolattn.training import train

from helpers import KEY, tiny_config, with_lora_effect

INSTRUCTION = "Retrieve semantically similar text."
TEXTS = ["the cat sat on the mat", "a man is playing a guitar", "x", "paris is the capital of france " * 3]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(backbone, **kw):
    kw = {"pooling": "mean", "dtype": "float32", "echo": True, **kw}
    return EmbeddingModel(ModelConfig(backbone=backbone, **kw), device="cpu")


def _count(seq: list[int], sub: list[int]) -> int:
    return sum(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_text_twice_and_only_the_second_copy_pooled(tiny_llama, instruction):
    m = _model(tiny_llama, padding_side="left")  # left padding: the pool mask still starts at the second copy
    tok, texts = m.tokenizer, ["a man is playing a guitar", "the cat sat on the mat in the park"]
    batch = m.tokenize(texts, instruction)
    for text, ids, att, pool in zip(texts, batch["input_ids"], batch["attention_mask"], batch["pool_mask"]):
        ids, pooled = ids[att.bool()].tolist(), ids[pool.bool()].tolist()
        own = tok(" " + text, add_special_tokens=False)["input_ids"]  # the text after the template's space
        assert _count(ids, own) == 2 and ids[-1] == tok.eos_token_id
        assert pooled == own + [tok.eos_token_id]  # exactly the second copy and EOS
        decoded = tok.decode(ids)
        first = f"Instruct: {instruction}\nQuery: {text}" if instruction else f"{DOCUMENT}{text}"
        again = QUERY_AGAIN if instruction else "\nDocument again: "
        assert decoded == f"{first}{again}{text}{tok.eos_token}"
        assert pool.sum() < att.sum() and (pool <= att).all()


def test_echo_vectors_differ_and_pool_the_second_copy(tiny_llama):
    m, plain = _model(tiny_llama), _model(tiny_llama, echo=False)
    echoed = m.encode(TEXTS, INSTRUCTION)
    assert np.abs(echoed - plain.encode(TEXTS, INSTRUCTION)).max() > 1e-3
    batch = m.tokenize(TEXTS[:1], INSTRUCTION)
    with torch.no_grad():  # the mean over the second copy's last-layer states (and EOS), nothing else
        states = m.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    expected = torch.nn.functional.normalize(states[0][batch["pool_mask"][0].bool()].mean(0), dim=-1)
    assert np.abs(echoed[0] - expected.numpy()).max() < 1e-5
    eos = _model(tiny_llama, pooling="eos")  # EOS pooling: the last token, after the second copy
    assert np.abs(eos.encode(TEXTS) - _model(tiny_llama, pooling="eos", echo=False).encode(TEXTS)).max() > 1e-3


def test_long_texts_are_cut_the_same_in_both_copies(tiny_llama, caplog):
    m = _model(tiny_llama, max_length=40)
    long = "the quick brown fox jumps over the lazy dog " * 4
    for instruction in (None, "Find it"):
        ids, skip = m._token_ids([long], instruction)
        text = m.tokenizer.decode(ids[0][skip[0]:-1])
        assert len(ids[0]) <= 40 and 0 < len(text.strip()) < len(long.strip())
        assert long.startswith(text.strip()) and _count(ids[0], ids[0][skip[0]:-1]) == 2
    assert "cut (the same tokens in both copies)" in caplog.text
    on_top, _ = m._token_ids([long], "Find it", max_length_applies_to="text")
    assert len(on_top[0]) > 40  # training's max_length_applies_to text: the template before the text on top


def test_bidirectional_echo_is_a_config_error(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="echo: true needs attention: causal"):
        ModelConfig(attention="bidirectional", echo=True)
    with pytest.raises(ValueError, match="ends with {text}"):
        ModelConfig(echo=True, instruction_template="{text} ({instruction})")
    with pytest.raises(ValueError, match="design 'x': echo: true needs attention: causal"):
        Design(name="x", pooling="mean", attention="bidirectional", echo=True)
    with pytest.raises(ValueError, match="base.echo: true needs causal attention.*4-lastlayer-bidirectional"):
        ExperimentConfig(base={"echo": True})  # the paper's five designs, two of them bidirectional
    folder = _model(tiny_llama).save_pretrained(tmp_path / "echo")
    with pytest.raises(UserError, match="needs attention: causal"):
        EmbeddingModel.from_pretrained(folder, attention="bidirectional")


def test_named_designs_reach_the_model_config():
    cfg = ExperimentConfig(designs=["echo-eos-causal", "echo-mean-causal", "1-eos-causal"])
    eos, mean, plain = (cfg.model_config_for(d) for d in cfg.designs)
    assert (eos.echo, eos.pooling, mean.echo, mean.pooling, plain.echo) == (True, "eos", True, "mean", False)


def test_prefix_reuse_stays_exact(tiny_backbones, monkeypatch):
    from poolattn import prefix

    calls = []
    real = prefix.shared_states
    monkeypatch.setattr(prefix, "shared_states", lambda *a: calls.append(a[5]) or real(*a))  # a[5]: shared tokens
    texts = ["a man is playing a guitar", "the cat", "what is the capital of france, and why is paris it?", "dogs"]
    for arch in ("llama", "gemma3"):  # gemma3: sliding windows shorter than the instruction
        for pooling in ("mean", "eos"):
            m = _model(tiny_backbones[arch], pooling=pooling)
            reused = m.encode(texts, INSTRUCTION)
            m.prefix_reuse = False
            assert np.abs(reused - m.encode(texts, INSTRUCTION)).max() <= 1e-5
            assert calls and calls[-1] >= prefix.MIN_SHARED_TOKENS  # the shared path really ran
            calls.clear()


def test_save_load_fingerprint_and_training(tiny_llama, tmp_path, caplog):
    m = _model(tiny_llama, pooling="eos")
    folder = m.save_pretrained(tmp_path / "echo")
    loaded = EmbeddingModel.from_pretrained(folder, device="cpu")
    assert loaded.config.echo and np.abs(loaded.encode(TEXTS) - m.encode(TEXTS)).max() < 1e-6
    assert m.fingerprint() != _model(tiny_llama, pooling="eos", echo=False).fingerprint()
    info = CliRunner().invoke(app, ["info", str(folder)], env={"COLUMNS": "200"})
    assert info.exit_code == 0 and "echo=True" in info.output
    off = EmbeddingModel.from_pretrained(folder, device="cpu", echo=False)  # an experiment: allowed, with a warning
    assert not off.config.echo and "trained with echo=True; running it with echo=False" in caplog.text
    cfg = tiny_config(tiny_llama, tmp_path, **{"model.echo": True, "model.max_length": 64, "max_steps": 2,
                                               "save_every": 2})
    final = EmbeddingModel.from_pretrained(train(cfg), device="cpu")
    assert final.config.echo and np.isfinite(final.encode(TEXTS)).all()


def _trained(backbone, pooling, kwargs=None):
    torch.manual_seed(0)
    return with_lora_effect(_model(backbone, pooling=pooling, max_length=64, pooling_kwargs=kwargs or {}))


def test_sentence_transformers_export_equals_poolattn(tiny_llama, tmp_path):
    from poolattn.export import _code_files

    task, jobs, refs = "STSBenchmark", {}, {}
    designs = {"eos": ("eos", None), "mean": ("mean", None), "latent": ("latent", {"num_latents": 4, "num_heads": 4})}
    for name, (pooling, kwargs) in designs.items():
        folder = _trained(tiny_llama, pooling, kwargs).save_pretrained(tmp_path / name)
        export_model(folder, tmp_path / f"{name}-st")
        model = EmbeddingModel.from_pretrained(folder, device="cpu")
        refs[name] = (model.encode(TEXTS), model.encode(TEXTS, instruction=INSTRUCTIONS[task]))
        jobs[name] = (str(tmp_path / f"{name}-st"), TEXTS, task)
    got = encode_without_poolattn(jobs)  # the long text is cut as poolattn cuts it (max_length 64)
    for name, (plain, prompted) in refs.items():
        assert np.abs(np.array(got[name]["plain"]) - plain).max() < 1e-5, name
        assert np.abs(np.array(got[name]["prompted"]) - prompted).max() < 1e-5, name
    st = tmp_path / "mean-st"
    assert is_own_export(st) and set(_code_files(echo=True)) <= {p.name for p in st.iterdir()}
    modules = json.loads((st / "modules.json").read_text())
    assert [m["type"] for m in modules][:2] == ["poolattn_echo.PoolattnEcho", "sentence_transformers.models.Transformer"]
    assert "echo embeddings" in (st / "README.md").read_text()
    with pytest.raises(ValueError, match="--format hf cannot echo"):
        export_model(tmp_path / "eos", tmp_path / "eos-hf", "hf")


def test_export_splits_a_prompt_prepended_by_older_sentence_transformers(tiny_llama, tmp_path):
    """sentence-transformers before `preprocess` hands the module prompt + text: the same features."""
    from sentence_transformers import SentenceTransformer

    export_model(_trained(tiny_llama, "mean").save_pretrained(tmp_path / "m"), tmp_path / "st")
    echo = SentenceTransformer(str(tmp_path / "st"), trust_remote_code=True, device="cpu")[0]
    prompt = echo.prompts[0]
    new, old = echo.preprocess(TEXTS, prompt=prompt), echo.tokenize([prompt + t for t in TEXTS])
    assert all(torch.equal(new[k], old[k]) for k in ("input_ids", "attention_mask", "prompt_length"))


def test_serve_returns_echo_vectors(tiny_llama, tmp_path):
    m = EmbeddingModel.from_pretrained(_trained(tiny_llama, "mean").save_pretrained(tmp_path / "m"), inference=True,
                                       device="cpu")
    ref, instructed = m.encode(TEXTS), m.encode(TEXTS, instruction=INSTRUCTION)
    ids = [m.tokenizer(t)["input_ids"] for t in TEXTS[:3]]
    settings = ServeSettings(model_name="tiny", api_key=KEY, max_inputs=8, max_body_bytes=4096)
    auth = {"authorization": f"Bearer {KEY}"}
    with TestClient(create_app(m, settings)) as client:
        def post(**body):
            r = client.post("/v1/embeddings", json={"model": "tiny", "encoding_format": "float", **body}, headers=auth)
            assert r.status_code == 200, r.text
            return np.array([d["embedding"] for d in r.json()["data"]]), r.json()["usage"]["prompt_tokens"]
        got, tokens = post(input=TEXTS[:3])
        assert np.abs(got - ref[:3]).max() < 1e-5 and tokens == sum(len(x) for x in m._token_ids(TEXTS[:3], None)[0])
        assert np.abs(post(input=TEXTS[:3], instruction=INSTRUCTION)[0] - instructed[:3]).max() < 1e-5
        assert np.abs(post(input=ids)[0] - ref[:3]).max() < 1e-5  # token ids: decoded, then echoed
    with TestClient(create_app(m, settings.model_copy(update={"max_input_tokens": 40}))) as client:
        r = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS[3:]}, headers=auth)
        assert r.status_code == 400 and "limit of 40" in r.json()["error"]["message"]
        assert "the text twice" in r.json()["error"]["message"]
        r = client.post("/v1/embeddings", json={"model": "tiny", "input": TEXTS[3:], "truncate": True,
                                                "encoding_format": "float"}, headers=auth)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] <= 40
        got = np.array(r.json()["data"][0]["embedding"])
        m.config.max_length, old = 40, m.config.max_length  # encode's own cut at 40: the same tokens, both copies
        try:
            assert np.abs(got - m.encode(TEXTS[3:])[0]).max() < 1e-5
        finally:
            m.config.max_length = old


def test_layer_analysis_pools_the_second_copy(tiny_llama):
    from poolattn.layers import LayerCache

    m = _model(tiny_llama)
    last = LayerCache(m).get(TEXTS[:3], layer=m.backbone.config.num_hidden_layers, pooling="mean")
    assert np.abs(last - m.encode(TEXTS[:3])).max() < 1e-2  # the design's own vectors (the cache keeps float16)
