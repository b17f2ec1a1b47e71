"""`poolattn export`: sentence-transformers folders that load without poolattn and give poolattn's vectors for every
design; the merged LoRA; the hf format; model_meta.json against mteb's ModelMeta."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poolattn import EmbeddingModel, ModelConfig
from poolattn.cli import app
from poolattn.evaluation.instructions import INSTRUCTIONS
from poolattn.export import export_model
from poolattn.export.check import encode_without_poolattn

from helpers import with_lora_effect

TEXTS = ["the cat sat on the mat", "a man is playing a guitar", "x", "paris is the capital of france " * 3]
DESIGNS = {  # name: (pooling, attention, pooling_kwargs)
    "eos": ("eos", "causal", {}),
    "mean-bi": ("mean", "bidirectional", {}),
    "wmean": ("weighted_mean", "causal", {}),
    "latent": ("latent", "causal", {"num_latents": 4, "num_heads": 4}),
    "latent-nvembed": ("latent", "bidirectional", {"preset": "nvembed", "num_latents": 4, "num_heads": 4}),
    "multilayer-bi": ("multilayer", "bidirectional", {"num_latents": 4, "num_heads": 4}),
    "mean-layers": ("mean", "causal", {"layers": "0..2"}),  # not ST's own Pooling: the module file; 0 = embeddings
    "multilayer-meaninit": ("multilayer", "bidirectional", {"num_latents": 4, "num_heads": 2, "head_dim": 32,
                                                            "init": "mean", "layers": [1, 2]}),
}



def _trained(backbone: str, pooling: str, attention: str, kwargs: dict, seed: int = 0) -> EmbeddingModel:
    """A design with a LoRA whose update is not zero (as after training)."""
    torch.manual_seed(seed)
    return with_lora_effect(EmbeddingModel(ModelConfig(backbone=backbone, pooling=pooling, attention=attention,
                                                       dtype="float32", max_length=64, pooling_kwargs=kwargs),
                                           device="cpu"))


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_sentence_transformers_export_equals_poolattn_for_every_design(tiny_llama, tmp_path):
    task = "STSBenchmark"
    jobs, refs = {}, {}
    for name, (pooling, attention, kwargs) in DESIGNS.items():
        folder = _trained(tiny_llama, pooling, attention, kwargs).save_pretrained(tmp_path / name)
        info = export_model(folder, tmp_path / f"{name}-st")
        assert info["merge_min_cos"] >= 0.99999
        model = EmbeddingModel.from_pretrained(folder, device="cpu")  # the unmerged original
        refs[name] = (model.encode(TEXTS), model.encode(TEXTS, instruction=INSTRUCTIONS[task]))
        jobs[name] = (str(tmp_path / f"{name}-st"), TEXTS, task)
    got = encode_without_poolattn(jobs)
    worst = {}
    for name, (plain, prompted) in refs.items():
        worst[name] = min(_cos(got[name]["plain"], plain).min(), _cos(got[name]["prompted"], prompted).min())
    assert min(worst.values()) >= 0.9999, worst
    assert not (tmp_path / "eos-st" / "poolattn_pooler.py").exists()  # built-in ST pooling, no custom code
    assert (tmp_path / "latent-st" / "pooling.py").exists()
    config = json.loads((tmp_path / "mean-bi-st" / "config.json").read_text())
    assert config["is_causal"] is False
    assert json.loads((tmp_path / "multilayer-bi-st" / "config.json").read_text())["output_hidden_states"] is True
    assert json.loads((tmp_path / "mean-layers-st" / "config.json").read_text())["output_hidden_states"] is True
    pooler = json.loads((tmp_path / "mean-layers-st" / "1_PoolattnPooler" / "config.json").read_text())
    assert (pooler["pooling"], pooler["options"]) == ("mean", {"layers": "0..2"})


def test_hf_export_and_model_meta(tiny_llama, tmp_path):
    from mteb.models import ModelMeta
    from transformers import AutoModel, AutoTokenizer

    folder = _trained(tiny_llama, "mean", "bidirectional", {}).save_pretrained(tmp_path / "mean")
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(folder), str(tmp_path / "hf"), "--format", "hf"])
    assert res.exit_code == 0, res.output
    tok, backbone = AutoTokenizer.from_pretrained(tmp_path / "hf"), AutoModel.from_pretrained(tmp_path / "hf")
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert (batch["input_ids"][0, batch["attention_mask"][0].sum() - 1] == tok.eos_token_id).item()
    with torch.no_grad():
        h = backbone(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    vectors = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    ref = EmbeddingModel.from_pretrained(folder, device="cpu").encode(TEXTS)
    assert _cos(vectors, ref).min() >= 0.9999  # a server's own mean pooling gives the design's vectors
    meta = json.loads((tmp_path / "hf" / "model_meta.json").read_text())
    ModelMeta.model_validate({**meta, "loader": None})
    assert meta["embed_dim"] == 64 and "--pooling mean" in (tmp_path / "hf" / "README.md").read_text()

    latent = _trained(tiny_llama, "latent", "causal", {"num_latents": 4, "num_heads": 4}).save_pretrained(tmp_path / "lat")
    res = runner.invoke(app, ["export", str(latent), str(tmp_path / "hf2"), "--format", "hf"])
    assert res.exit_code != 0 and "use --format sentence-transformers" in res.output
    assert not (tmp_path / "hf2").exists()


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_export_parity_and_mteb_score(tmp_path, data_dir):
    """SmolLM2 with a multilayer pooler: ST-loaded vectors equal poolattn's, and mteb scores the ST-loaded export
    on STSBenchmark as `poolattn eval` scores the original."""
    from sentence_transformers import SentenceTransformer

    from poolattn.evaluation import evaluate

    folder = _trained("smollm2-135m", "multilayer", "bidirectional", {"num_latents": 8, "num_heads": 8})
    folder = folder.save_pretrained(tmp_path / "smol")
    export_model(folder, tmp_path / "smol-st")
    got = encode_without_poolattn({"smol": (str(tmp_path / "smol-st"), TEXTS, "STSBenchmark")})["smol"]
    model = EmbeddingModel.from_pretrained(folder, device="cpu")
    assert _cos(got["plain"], model.encode(TEXTS)).min() >= 0.9999
    ours = evaluate(model, ["STSBenchmark"], data_dir=data_dir, output_dir=tmp_path / "ev1", cache=False)
    st = SentenceTransformer(str(tmp_path / "smol-st"), trust_remote_code=True, device="cpu")
    theirs = evaluate(st, ["STSBenchmark"], data_dir=data_dir, output_dir=tmp_path / "ev2", cache=False)
    assert abs(ours["STSBenchmark"].main_score - theirs["STSBenchmark"].main_score) < 1e-3, (ours, theirs)


def _sts_pack(root) -> str:
    """A one-task data pack: 8 STSBenchmark pairs."""
    rows = [{"sentence1": a, "sentence2": b, "score": s} for a, b, s in [
        ("a man is playing a guitar", "a man plays the guitar", 4.8), ("the cat sat on the mat", "a dog runs", 0.4),
        ("two dogs run in the park", "dogs are running in a park", 4.5), ("paris is in france", "a woman cooks", 0.1),
        ("a woman is slicing an onion", "someone cuts an onion", 4.2), ("the sky is blue", "a man sings", 0.3),
        ("how do i reset my password", "password reset steps", 3.9), ("x", "the quick brown fox", 0.0)]]
    (root / "mteb/STSBenchmark").mkdir(parents=True)
    (root / "mteb/STSBenchmark/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps({"tasks": {"STSBenchmark": {
        "type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}}))
    return str(root)


def test_eval_knows_its_own_export_and_asks_for_the_flag_for_foreign_code(tiny_llama, tmp_path, monkeypatch):
    """Issue 26 row 4: `poolattn eval --model <sentence-transformers export of a multilayer design>` works as the
    README says; a folder whose code is not poolattn's own needs --trust-remote-code, said in one line (exit 2)."""
    import shutil

    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    folder = _trained(tiny_llama, "multilayer", "bidirectional", {"num_latents": 4, "num_heads": 4})
    folder = folder.save_pretrained(tmp_path / "ml")
    export_model(folder, tmp_path / "ml-st")
    pack, runner = _sts_pack(tmp_path / "pack"), CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path / "ml-st"), "-t", "STSBenchmark", "--data", pack,
                              "-o", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["tasks"][0]["task"] == "STSBenchmark"
    shutil.copytree(tmp_path / "ml-st", tmp_path / "foreign")
    with open(tmp_path / "foreign" / "poolattn_pooler.py", "a") as f:
        f.write("\n# edited: no longer the code this poolattn writes\n")
    args = ["eval", "--model", str(tmp_path / "foreign"), "-t", "STSBenchmark", "--data", pack, "-o"]
    res = runner.invoke(app, args + [str(tmp_path / "ev2")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "pass --trust-remote-code" in lines[0], res.output
    res = runner.invoke(app, args + [str(tmp_path / "ev3"), "--trust-remote-code"])
    assert res.exit_code == 0, res.output
    assert "--trust-remote-code" in runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output


def test_exports_truncate_as_the_source_does(tiny_llama, tmp_path):
    """Issue 26 row 5: the exported tokenizers stop at the model's max_length (the hf one said 1e30), and a loaded
    export gives the source's vectors for texts longer than that."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from poolattn.evaluation import load_model

    model = _trained(tiny_llama, "eos", "causal", {})
    model.config = model.config.model_copy(update={"max_length": 8})
    folder = model.save_pretrained(tmp_path / "eos")
    long = ["the quick brown fox jumps over the lazy dog " * 3, "a man is playing a guitar " * 4, "x"]
    ref = EmbeddingModel.from_pretrained(folder, device="cpu").encode(long)
    export_model(folder, tmp_path / "hf", "hf")
    export_model(folder, tmp_path / "st")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").model_max_length == 8
    hf = load_model(str(tmp_path / "hf"), device="cpu", dtype="float32")  # as `poolattn eval --model <hf export>`
    assert hf.config.max_length == 8
    assert np.abs(hf.encode(long) - ref).max() < 1e-5
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert st.max_seq_length == 8 and st.tokenizer.model_max_length == 8
    assert np.abs(st.encode(long) - ref).max() < 1e-5
