"""Peak host RAM per rank when N ranks (torchrun) each load the backbone onto their device, as training does.

Every rank loads EmbeddingModel(backbone, device=...) (weights streamed straight to the device) and reports its peak
RSS (getrusage) before and after the load, and the size of the weights. On a GPU machine the host peak should stay
near the Python + torch baseline, not baseline + weights; on CPU the weights are the device copy itself.

    python benchmarks/load_memory.py [--nproc 2] [--backbone smollm2-135m] [--device auto] [--dtype auto]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(args) -> None:
    import torch

    from poolattn import EmbeddingModel, ModelConfig

    before = _peak_gb()
    m = EmbeddingModel(ModelConfig(backbone=args.backbone, dtype=args.dtype), device=args.device)
    weights = sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30
    print("RANK " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "device": str(m.device),
                                "dtype": str(next(m.backbone.parameters()).dtype).removeprefix("torch."),
                                "weights_gb": round(weights, 3), "peak_rss_before_load_gb": round(before, 3),
                                "peak_rss_gb": round(_peak_gb(), 3),
                                "gpu_gb": round(torch.cuda.memory_allocated(m.device) / 2**30, 3)
                                if m.device.type == "cuda" else None}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    from poolattn.backbone import local_source

    local_source(args.backbone)  # dequantize a GGUF once here, not in every rank
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           __file__, "--child", "--backbone", args.backbone, "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    rows = sorted((json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines() if line.startswith("RANK ")),
                  key=lambda r: r["rank"])
    if out.returncode != 0 or len(rows) != args.nproc:
        sys.exit(f"FAIL: {args.nproc} ranks did not all report (exit {out.returncode}):\n{out.stderr[-2000:]}")
    for r in rows:
        print(f"rank {r['rank']}: {r['device']} {r['dtype']}, weights {r['weights_gb']:.3f} GiB, peak host RSS "
              f"{r['peak_rss_before_load_gb']:.3f} GiB before the load, {r['peak_rss_gb']:.3f} GiB after"
              + (f", GPU {r['gpu_gb']:.3f} GiB" if r["gpu_gb"] is not None else ""))
    print("RESULT " + json.dumps(rows))


if __name__ == "__main__":
    main()
