"""Training throughput and peak memory on SmolLM2 at contrastive batch 32, 128 and 512, with and without GradCache.

Each configuration runs in a fresh subprocess (peak RSS from getrusage is per process): load the model, one small
warm-up step, then one timed training step (forward, loss, backward, optimizer step) on a full batch. The parent
samples each child's RSS and stops it above --mem-cap-gb: that is where a configuration "runs out" here, without
pushing a shared machine into swap or the OOM killer.

    python benchmarks/train.py                       # SNLI pairs + hard negatives, max_length 32
    python benchmarks/train.py --batch-sizes 32 128 --max-length 64 --out bench.json
    python benchmarks/train.py --device cuda:0 --dtype auto   # on a GPU: adds peak GPU memory

--dtype auto: bf16 weights where the device has fast bf16 (CUDA capability 8+, AVX512-BF16/AMX), else fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def child(args) -> None:
    import torch

    from poolattn.training import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(model={"backbone": args.backbone, "pooling": args.pooling, "dtype": args.dtype},
                          device=args.device,
                          data=[{"path": f"train/{args.source}.jsonl"}], data_dir=args.data,
                          batch_size=args.batch_size, chunk_size=args.chunk_size, max_length=args.max_length,
                          max_steps=10, warmup_steps=0, output_dir=tmp, progress=False, seed=0)
        t = Trainer(cfg)
        t.setup()
        model_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        batch = t.sampler.next_batch().examples
        t.backward_step(batch[:8])  # warm-up: kernels, allocator
        t.optimizer.zero_grad()
        cuda = t.acc.device.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats(t.acc.device)
        start = time.perf_counter()
        loss, texts, tokens = t.backward_step(batch)
        t.optimizer.step()
        sync()
        dt = time.perf_counter() - start
        print(json.dumps({"batch_size": args.batch_size, "grad_cache": args.chunk_size is not None,
                          "chunk_size": args.chunk_size, "texts": texts, "tokens": tokens, "step_s": round(dt, 2),
                          "seqs_per_s": round(texts / dt, 2), "tokens_per_s": round(tokens / dt, 1),
                          "loss": round(float(loss), 4), "model_rss_gb": round(model_rss, 2),
                          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                          "threads": torch.get_num_threads(), "device": str(t.acc.device),
                          "dtype": str(next(t.unwrapped.backbone.parameters()).dtype).removeprefix("torch."),
                          "peak_gpu_gb": round(torch.cuda.max_memory_allocated(t.acc.device) / 2**30, 2)
                          if cuda else None}), flush=True)


def run_one(args, batch_size: int, chunk_size: int | None) -> dict:
    import psutil

    cmd = [sys.executable, __file__, "--child", "--batch-size", str(batch_size), "--backbone", args.backbone,
           "--pooling", args.pooling, "--source", args.source, "--data", args.data,
           "--max-length", str(args.max_length), "--device", args.device, "--dtype", args.dtype]
    if chunk_size:
        cmd += ["--chunk-size", str(chunk_size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seen, killed = 0.0, False
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            seen = max(seen, ps.memory_info().rss / 2**30)
        except psutil.Error:
            pass
        if seen > args.mem_cap_gb:
            proc.kill()
            killed = True
        time.sleep(0.1)
    out, err = proc.communicate()
    base = {"batch_size": batch_size, "grad_cache": chunk_size is not None, "chunk_size": chunk_size}
    if killed:
        return {**base, "out_of_memory": f"RSS passed the {args.mem_cap_gb} GiB cap", "peak_rss_gb": round(seen, 2)}
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**base, "error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--chunk-size", type=int, default=32, help="GradCache chunk (texts per forward)")
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--pooling", default="eos")
    p.add_argument("--source", default="SNLI_devtest", help="training file under <data>/train")
    p.add_argument("--data", default=os.environ.get("POOLATTN_DATA", "../shared/data"))
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--mem-cap-gb", type=float, default=12.0, help="host RSS cap per configuration")
    p.add_argument("--device", default="auto", help="auto (GPU, else MPS, else CPU), cpu, cuda:N, mps")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where fast, else fp32), float32, bfloat16")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.chunk_size = args.chunk_size if "--chunk-size" in sys.argv else None
        return child(args)

    from rich.console import Console
    from rich.table import Table

    results = []
    for bs in args.batch_sizes:
        for chunk in (None, args.chunk_size):
            r = run_one(args, bs, chunk)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    table = Table(title=f"training step, {args.backbone}, {args.source}, max_length {args.max_length}, "
                        f"device {args.device}, dtype {args.dtype}")
    for col in ("batch", "GradCache", "texts", "step s", "seqs/s", "tokens/s", "peak RSS GiB", "peak GPU GiB"):
        table.add_column(col, justify="right")
    for r in results:
        gc = f"chunk {r['chunk_size']}" if r["grad_cache"] else "off"
        if "seqs_per_s" in r:
            table.add_row(str(r["batch_size"]), gc, str(r["texts"]), f"{r['step_s']:.1f}", f"{r['seqs_per_s']:.1f}",
                          f"{r['tokens_per_s']:.0f}", f"{r['peak_rss_gb']:.2f}",
                          "" if r.get("peak_gpu_gb") is None else f"{r['peak_gpu_gb']:.2f}")
        else:
            table.add_row(str(r["batch_size"]), gc, "", "", "", "", r.get("out_of_memory") or r.get("error", ""), "")
    Console().print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("child", "batch_size")},
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
