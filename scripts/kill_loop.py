"""Kill loop: SIGKILL `poolattn train` and `poolattn eval` (the real CLI, on a tiny random model) at random instants,
rerun each to completion, and check the results equal an uninterrupted run's (training weights bitwise, evaluation
scores exactly). Prints kills sent, reruns succeeded, results identical.

    .venv/bin/python scripts/kill_loop.py --rounds 10          # 10 training kills and 10 eval kills
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
CLI = [sys.executable, "-m", "poolattn.cli"]
WORDS = "the quick brown fox jumps over a lazy dog man playing guitar two dogs run in park cat sat on mat".split()


def setup(root: Path) -> tuple[Path, Path, Path]:
    """(tiny model folder, training config, data pack with one STS task)."""
    import yaml

    from poolattn import EmbeddingModel, ModelConfig
    from poolattn.testing import tiny_backbone

    rng = random.Random(0)
    backbone = tiny_backbone(root / "backbone", "llama")
    model = root / "model"
    EmbeddingModel(ModelConfig(backbone=backbone, pooling="mean", dtype="float32")).save_pretrained(model)
    (root / "data").mkdir()
    with open(root / "data" / "pairs.jsonl", "w") as f:
        for _ in range(200):
            q = " ".join(rng.choices(WORDS, k=6))
            f.write(json.dumps({"query": q, "positive": q + " " + rng.choice(WORDS)}) + "\n")
    cfg = root / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"backbone": backbone, "pooling": "latent", "pooling_kwargs": {"num_latents": 4, "num_heads": 4},
                  "dtype": "float32", "max_length": 32},
        "data": [{"path": str(root / "data" / "pairs.jsonl")}], "batch_size": 8, "chunk_size": 3, "max_steps": 12,
        "save_every": 2, "warmup_steps": 1, "lr": 1e-3, "mixed_precision": "no", "progress": False, "seed": 0,
        "output_dir": str(root / "train-ref")}))
    pack = root / "pack"
    (pack / "mteb/STSBenchmark").mkdir(parents=True)
    (pack / "mteb/STSBenchmark/test.jsonl").write_text("".join(json.dumps(
        {"sentence1": " ".join(rng.choices(WORDS, k=6)), "sentence2": " ".join(rng.choices(WORDS, k=6)),
         "score": rng.uniform(0, 5)}) + "\n" for _ in range(400)))
    (pack / "tasks.json").write_text(json.dumps({"tasks": {"STSBenchmark": {
        "type": "STS", "path": "mteb/STSBenchmark", "splits": {"test": "test.jsonl"}}}}))
    return model, cfg, pack


def run(cmd: list[str], env: dict, kill_after: float | None = None) -> int:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if proc.returncode not in (0, -9):
        print(err.decode()[-1500:], file=sys.stderr)
    return proc.returncode


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {f.name: load_file(str(f)) for f in sorted(folder.glob("*.safetensors"))}


def same_weights(a: Path, b: Path) -> bool:
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(
        wa[f].keys() == wb[f].keys() and all(torch.equal(wa[f][k], wb[f][k]) for k in wa[f]) for f in wa)


def score(folder: Path) -> float:
    from poolattn.evaluation.summary import SUMMARY_FILE, read_summary

    return next(iter(read_summary(folder / SUMMARY_FILE).values())).main_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="kills of each kind (train, eval)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="default: a temporary folder")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="kill-loop-"))
    root.mkdir(parents=True, exist_ok=True)
    model, cfg, pack = setup(root)
    env = {**ENV, "POOLATTN_CACHE": str(root / "cache-ref")}

    t0 = time.monotonic()
    assert run(CLI + ["train", str(cfg)], env) == 0, "the uninterrupted training run failed"
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    eval_cmd = CLI + ["eval", "--model", str(model), "--tasks", "STSBenchmark", "--data", str(pack), "--batch-size", "8"]
    assert run(eval_cmd + ["-o", str(root / "eval-ref")], env) == 0, "the uninterrupted eval failed"
    eval_s = time.monotonic() - t0
    ref_weights, ref_score = root / "train-ref" / "final", score(root / "eval-ref")

    tally = {kind: {"kills": 0, "ok": 0, "same": 0} for kind in ("train", "eval")}
    for i in range(args.rounds):
        out = root / f"train-{i}"
        cmd = CLI + ["train", str(cfg), "--set", f"output_dir={out}"]
        for _ in range(rng.randint(1, 3)):  # one to three kills, then a run to the end
            if run(cmd, env, kill_after=rng.uniform(0.3, train_s)) == -9:
                tally["train"]["kills"] += 1
        if run(cmd, env) == 0:
            tally["train"]["ok"] += 1
            tally["train"]["same"] += same_weights(ref_weights, out / "final")

        cache_env = {**env, "POOLATTN_CACHE": str(root / f"cache-{i}")}  # a fresh cache: its first write is hit
        cmd = eval_cmd + ["-o", str(root / f"eval-{i}")]
        if run(cmd, cache_env, kill_after=rng.uniform(0.3, eval_s)) == -9:
            tally["eval"]["kills"] += 1
        if run(cmd, cache_env) == 0:
            tally["eval"]["ok"] += 1
            tally["eval"]["same"] += score(root / f"eval-{i}") == ref_score
        print(f"round {i + 1}/{args.rounds}: {json.dumps(tally)}", flush=True)
    for kind, t in tally.items():
        print(f"{kind}: kills sent {t['kills']}, reruns succeeded {t['ok']}/{args.rounds}, "
              f"results identical {t['same']}/{args.rounds}")
    print(f"work folder: {root}")


if __name__ == "__main__":
    main()
