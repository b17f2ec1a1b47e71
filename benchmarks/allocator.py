"""Training speed under each memory allocator installed here: glibc's malloc, tcmalloc and jemalloc, side by side.

Each allocator trains the same first --steps steps of a training config (default: configs/train_cpu.yaml, the
best_cpu recipe) in a fresh `poolattn train` process ($POOLATTN_ALLOCATOR picks the preload; poolattn.allocator),
one after another. Printed per allocator: training seconds (the trainer's clock, model loading excluded), the median
step, user and system CPU seconds, peak RSS, and whether every step's loss equals the system allocator's (it must:
an allocator places tensors, it computes nothing). Run it with nothing else on the machine.

    python benchmarks/allocator.py                     # 40 steps of configs/train_cpu.yaml
    python benchmarks/allocator.py --steps 20 --config configs/default.yaml --out alloc.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from poolattn import allocator
from poolattn.environment import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def run(choice: str, config: str, steps: int, tmp: Path) -> dict:
    out = tmp / choice
    cmd = [sys.executable, "-m", "poolattn", "train", config, "--set", f"output_dir={out}", "--set",
           f"max_steps={steps}", "--set", f"save_every={steps + 1}", "--set", "progress=false"]
    proc = subprocess.Popen(cmd, env=allocator.child_env(choice), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time and peak RSS
    err = proc.stderr.read()
    if status != 0:
        raise SystemExit(f"{choice}: poolattn train failed:\n{err[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [b["elapsed_s"] - a for a, b in zip([0.0] + [r["elapsed_s"] for r in rows], rows)]
    return {"allocator": choice, "train_s": rows[-1]["elapsed_s"], "median_step_s": round(statistics.median(times), 2),
            "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1),
            "peak_rss_gb": round(usage.ru_maxrss / 2 ** 20, 2), "losses": [r["loss"] for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/train_cpu.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()
    choices = ["system"] + [name for name in allocator.LIBRARIES if allocator.find(name) is not None]
    print(f"{cpu_name()}, {os.cpu_count()} cores; {args.steps} steps of {args.config}; allocators: "
          f"{', '.join(choices)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = str(Path(args.config).resolve())  # the children run in the repository root
        results = [run(c, config, args.steps, Path(tmp)) for c in choices]
    base = results[0]
    print(f"{'allocator':<10} {'train s':>8} {'x system':>8} {'step s':>7} {'user s':>7} {'sys s':>6} "
          f"{'peak GB':>7}  losses")
    for r in results:
        same = "identical" if r["losses"] == base["losses"] else "DIFFER"
        print(f"{r['allocator']:<10} {r['train_s']:>8.1f} {base['train_s'] / r['train_s']:>8.2f} "
              f"{r['median_step_s']:>7.2f} {r['user_s']:>7.1f} {r['sys_s']:>6.1f} {r['peak_rss_gb']:>7.2f}  {same}")
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_name(), "config": args.config, "steps": args.steps,
                                              "results": results}, indent=1))


if __name__ == "__main__":
    main()
