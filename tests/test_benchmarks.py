"""Smoke runs of the benchmark scripts on tiny models: they start, run every row and write their results (the
figures themselves are measured on real models, alone on a machine)."""
from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_cost_runs_every_row_on_a_tiny_model(tiny_llama, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    words = "the cat sat on a mat two dogs run in the park what is the capital of france".split()
    say = lambda n=6: " ".join(rng.choice(words) for _ in range(n))
    pack = tmp_path / "pack"
    (pack / "mteb/STSBenchmark").mkdir(parents=True)
    (pack / "mteb/STSBenchmark/test.jsonl").write_text("".join(
        json.dumps({"sentence1": say(), "sentence2": say(), "score": rng.uniform(0, 5)}) + "\n" for _ in range(12)))
    (pack / "train").mkdir()
    (pack / "train/pairs.jsonl").write_text("".join(
        json.dumps({"query": say(), "positive": say(), "negative": say()}) + "\n" for _ in range(40)))
    (pack / "tasks.json").write_text(json.dumps({"tasks": {"STSBenchmark": {
        "type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}}))
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump({
        "base": {"backbone": tiny_llama, "dtype": "float32", "max_length": 64},
        "designs": ["1-eos-causal", {"name": "5-multilayer-bidirectional", "pooling_kwargs": {"num_latents": 4}}],
        "train": {"data": [{"path": "train/pairs.jsonl", "instruction": "Retrieve semantically similar text.",
                            "symmetric": True}],
                  "lora": {"r": 4, "alpha": 8}, "batch_size": 4, "max_length": 32, "warmup_steps": 0,
                  "gradient_checkpointing": False, "mixed_precision": "no"},
        "eval": {"tasks": "STSBenchmark", "data_dir": str(pack)}, "device": "cpu"}))
    out = tmp_path / "cost.json"
    _script("eval_cost").main(["--config", str(config), "--steps", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "AVX512-BF16" in printed and "largest main-score difference" in printed
    result = json.loads(out.read_text())
    evals = {(r["model"], r["variant"]): r for r in result["eval"]}
    assert len(evals) == 18  # baseline, designs 1 and 5, six variants each
    for (model, variant), r in evals.items():
        assert "seconds" in r or r["skipped"].startswith("n/a"), (model, variant)
    assert all(d == 0.0 for per in result["max_score_diff_x100"].values() for v, d in per.items()
               if v in ("all-splits", "no-dedup", "no-fused-lora"))  # exact savings: the same scores (fp32)
    trains = {(r["design"], r["variant"]): r for r in result["train"]}
    assert set(trains) == {(d, v) for d in ("1-eos-causal", "5-multilayer-bidirectional")
                           for v in ("on", "no-prefix-reuse")}
    assert len(trains["1-eos-causal", "on"]["step_s"]) == 2 and trains["1-eos-causal", "on"]["median_step_s"] > 0


def test_eval_cost_loads_trained_models_in_the_dtype_asked(tiny_llama, tmp_path):
    """--dtype float32 reaches a trained model saved in bf16 (the exactness of the savings is measured in fp32)."""
    import torch

    from poolattn import EmbeddingModel, ModelConfig
    from poolattn.experiment import ExperimentLayout
    from poolattn.experiment.designs import Design

    EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="eos", dtype="bfloat16"), device="cpu").save_pretrained(
        ExperimentLayout(tmp_path).final("1-eos-causal"))
    cost, design = _script("eval_cost"), Design(name="1-eos-causal", pooling="eos")
    as_saved, _ = cost.load(None, design, tmp_path, "cpu")
    fp32, source = cost.load(None, design, tmp_path, "cpu", dtype="float32")
    assert source.endswith("final")
    assert next(as_saved.parameters()).dtype == torch.bfloat16 and next(fp32.parameters()).dtype == torch.float32
