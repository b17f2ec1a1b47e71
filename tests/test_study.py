"""The budget study on a tiny model: a constant-lr snapshot at step k is the k-step run, and the study writes its
sweep, seed folders, reports and table."""
import json
from pathlib import Path

import numpy as np
import pytest

from poolattn.experiment import Design
from poolattn.experiment.study import StudySettings, load_study, run_study
from poolattn.model import EmbeddingModel
from poolattn.training import TrainConfig, train

from helpers import tiny_experiment_config

TEXTS = ["a man plays a guitar", "the cat sat on the mat", "how do i reset my password"]


def _train(tmp_path, tiny_llama, name, steps, snapshots=()):
    train_file = tmp_path / "t.jsonl"
    if not train_file.exists():
        train_file.write_text("".join(json.dumps({"query": f"q {i} text", "positive": f"p {i} text"}) + "\n"
                                      for i in range(40)))
    cfg = TrainConfig(model={"backbone": str(tiny_llama), "dtype": "float32", "pooling": "multilayer",
                             "attention": "bidirectional", "pooling_kwargs": {"num_latents": 4, "num_heads": 4}},
                      data=[{"path": str(train_file)}], batch_size=4, lr=1e-3, warmup_steps=1, schedule="constant",
                      max_steps=steps, save_every=100, progress=False, output_dir=str(tmp_path / name),
                      lora={"r": 4, "alpha": 8, "dropout": 0.1}, gradient_checkpointing=False,
                      snapshot_steps=list(snapshots))
    return train(cfg)


def test_constant_lr_snapshot_equals_the_shorter_run(tiny_llama, tmp_path):
    _train(tmp_path, tiny_llama, "long", 5, snapshots=[2, 5])
    short = _train(tmp_path, tiny_llama, "short", 2)
    snap = tmp_path / "long" / "snapshots" / "step-000002"
    assert (tmp_path / "long" / "snapshots" / "step-000005").is_dir()
    a = EmbeddingModel.from_pretrained(snap, device="cpu").encode(TEXTS)
    b = EmbeddingModel.from_pretrained(short, device="cpu").encode(TEXTS)
    c = EmbeddingModel.from_pretrained(tmp_path / "long" / "final", device="cpu").encode(TEXTS)
    assert np.abs(a - b).max() < 1e-5  # the same model
    assert np.abs(a - c).max() > 1e-4  # and not the 5-step one
    # A constant-lr run may be extended: 2 steps, then 5, is the 5-step run.
    extended = _train(tmp_path, tiny_llama, "short", 5)
    d = EmbeddingModel.from_pretrained(extended, device="cpu").encode(TEXTS)
    assert np.abs(c - d).max() < 1e-5


def test_study_settings_checked():
    with pytest.raises(ValueError, match="warmup"):
        StudySettings(lrs=[1e-3], budgets=[3], seeds=[1], warmup_steps=5)
    with pytest.raises(ValueError, match="sweep_budgets"):
        StudySettings(lrs=[1e-3], budgets=[3, 6], seeds=[1], sweep_budgets=[4], warmup_steps=1)


def test_shipped_study_config_loads():
    cfg, study = load_study("configs/study_budget.yaml")
    assert [d.name for d in cfg.designs] == ["1-eos-causal", "5-multilayer-bidirectional"]
    assert study.budgets == sorted(study.budgets) and len(study.seeds) >= 3


def test_tiny_study_end_to_end(tiny_llama, data_dir, tmp_path):
    cfg = tiny_experiment_config(tmp_path, tiny_llama, data_dir)
    cfg.eval.tasks = ["BIOSSES"]
    cfg = cfg.model_copy(update={"designs": [Design(name="eos-causal", pooling="eos"),
                                             Design(name="mean-bi", pooling="mean", attention="bidirectional")],
                                 "output_dir": str(tmp_path / "study"), "name": "study"})
    study = StudySettings(lrs=[1e-4, 1e-3], budgets=[2, 3], sweep_budgets=[3], seeds=[1, 2], warmup_steps=1)
    out = run_study(cfg, study)
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["picked_lr"] in (1e-4, 1e-3) and len(sweep["mean_score"]) == 2
    picked = "1e-4" if sweep["picked_lr"] == 1e-4 else "1e-3"
    for k in (2, 3):
        folder = out / f"lr{picked}-steps{k}"
        assert sorted(p.parent.parent.name for p in folder.glob("runs/*/eval/summary.json")) == [
            "eos-causal-s1", "eos-causal-s2", "mean-bi-s1", "mean-bi-s2"]
        assert (folder / "report.md").exists()
    data = json.loads((out / "study.json").read_text())
    assert [b["steps"] for b in data["budgets"]] == [2, 3]
    pair = data["budgets"][0]["pairs"][0]
    assert pair["mde"] > 0 and pair["seed_sd"] is not None
    assert "| 2 |" in (out / "study.md").read_text()
    # resumed with one more design (a lever against the same references): only its runs are trained, at the
    # picked lr; nothing else is redone and the pick stays
    stamp = (out / f"lr{picked}-steps3" / "runs" / "mean-bi-s2" / "eval" / "summary.json").stat().st_mtime_ns
    # The added design is a lever of mean-bi that also trains with another LoRA rank (merged into the shared lora).
    lever = Design(name="wmean", pooling="weighted_mean", attention="bidirectional", lever_of="mean-bi",
                   train={"lora": {"r": 2}})
    more = cfg.model_copy(update={"designs": cfg.designs + [lever]})
    run_study(more, study)
    saved = json.loads((out / "train" / f"lr{picked}" / "wmean-s1" / "config.json").read_text())
    assert saved["lora"]["r"] == 2 and saved["lora"]["alpha"] == 8  # rank changed, the shared alpha kept
    assert (out / f"lr{picked}-steps3" / "runs" / "mean-bi-s2" / "eval" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "sweep.json").read_text()) == sweep
    assert sorted(p.name for p in (out / "train").glob("*/wmean-*")) == ["wmean-s1", "wmean-s2"]
    assert len(list((out / "train").glob(f"lr{picked}/wmean-*"))) == 2
    data = json.loads((out / "study.json").read_text())
    assert {(r["a"], r["b"]) for r in data["budgets"][1]["pairs"]} >= {("eos-causal", "wmean"), ("mean-bi", "wmean")}
    levers = data["budgets"][1]["levers"]
    assert {r["category"] for r in levers} >= {"STS"} and {r["lever"] for r in levers} == {"wmean"}
    row = next(r for r in levers if r["category"] == "STS")
    assert row["base"] == "mean-bi" and row["changes"] == 'pooling: "weighted_mean"; train.lora: {"r": 2}'
    assert row["ci_low"] <= row["effect"] <= row["ci_high"] and row["n_seeds"] == 2
    pair = next(p for p in data["budgets"][1]["pairs"] if {p["a"], p["b"]} == {"mean-bi", "wmean"}
                and p["category"] == "STS")
    assert row["effect"] == pytest.approx(pair["diff"] if pair["b"] == "wmean" else -pair["diff"])
    md = (out / "study.md").read_text()
    assert "## Levers" in md and "| 3 | wmean |" in md
    assert "training changes" in (out / f"lr{picked}-steps3" / "report.md").read_text()


def test_study_refuses_a_lever_on_its_own_axes(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "extends: {}\nstudy: {{lrs: [1.0e-3], budgets: [30], seeds: [1]}}\n"
        "designs: [1-eos-causal, {{name: fast, pooling: eos, lever_of: 1-eos-causal, train: {{lr: 1.0e-2}}}}]\n".format(Path("configs/study_budget.yaml").resolve()))
    with pytest.raises(ValueError, match="study sets those"):
        load_study(tmp_path / "s.yaml")


def test_study_refuses_a_reference_that_is_not_one_of_its_designs(tmp_path):
    # study_budget.yaml's reference (default.yaml's 1-eos-causal) with one other design: refused at load, before any
    # training (a study's folders evaluate no baseline, so the baseline is no reference there either).
    (tmp_path / "s.yaml").write_text(
        "extends: {}\nstudy: {{lrs: [1.0e-3], budgets: [30], seeds: [1]}}\n"
        "designs: [{{name: only, pooling: eos}}]\n".format(Path("configs/study_budget.yaml").resolve()))
    with pytest.raises(ValueError, match="report.reference '1-eos-causal'"):
        load_study(tmp_path / "s.yaml")
    (tmp_path / "b.yaml").write_text((tmp_path / "s.yaml").read_text() + "report: {reference: baseline}\n")
    with pytest.raises(ValueError, match=r"valid: \['only'\]"):
        load_study(tmp_path / "b.yaml")
    (tmp_path / "ok.yaml").write_text((tmp_path / "s.yaml").read_text() + "report: {reference: only}\n")
    assert load_study(tmp_path / "ok.yaml")[0].report.reference == "only"


def test_shipped_lever_study_names_what_each_lever_changes():
    cfg, _ = load_study("configs/study_levers.yaml")
    names = [d.name for d in cfg.designs]
    for d in cfg.designs:
        if d.lever_of:
            assert d.lever_of in names
    assert any(d.train.get("distill") for d in cfg.designs)
