"""Sharded evaluation: `poolattn eval` in one process against the same under torchrun with N processes (each rank
encodes its share of every task's texts, rank 0 scores with mteb). Prints the wall time of each and the largest
absolute difference between their main scores (they should agree to float rounding).

    python benchmarks/eval_sharded.py [--model smollm2-135m] [--pooling mean] [--tasks STSBenchmark,BIOSSES,STS13]
                                      [--nproc 2]

On a CPU machine every process gets cores / N intra-op threads (OMP_NUM_THREADS), so the comparison is the same
cores used two ways; on a GPU node each rank takes its own GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def scores(folder: Path) -> dict[str, float]:
    from poolattn.evaluation.summary import SUMMARY_FILE, read_summary

    return {task: s.main_score for task, s in read_summary(folder / SUMMARY_FILE).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--tasks", default="STSBenchmark,BIOSSES,STS13")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    base = ["-m", "poolattn.cli", "eval", "-m", args.model, "--pooling", args.pooling, "-t", args.tasks,
            "--no-cache", "--device", args.device]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        t1 = run([sys.executable, *base, "-o", str(one)], {**env, "OMP_NUM_THREADS": str(cores)})
        tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
                  *base, "-o", str(many)], {**env, "OMP_NUM_THREADS": str(max(cores // args.nproc, 1))})
        a, b = scores(one), scores(many)
    diff = max(abs(a[t] - b[t]) for t in a)
    print(f"{args.model} {args.pooling}, tasks {args.tasks}, {cores} cores")
    print(f"| processes | wall s |\n|---:|---:|\n| 1 | {t1:.1f} |\n| {args.nproc} | {tn:.1f} |")
    print(f"max abs difference of main scores: {diff:.2e} over {len(a)} tasks")
    for t in a:
        print(f"  {t}: {100 * a[t]:.4f} vs {100 * b[t]:.4f}")


if __name__ == "__main__":
    main()
