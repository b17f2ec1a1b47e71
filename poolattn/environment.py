"""Versions and hardware of this machine (environment.json of an experiment)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from .allocator import in_use as allocator_in_use

ENV_PACKAGES = ["torch", "transformers", "peft", "accelerate", "mteb", "sentence-transformers", "scipy", "numpy",
                "poolattn"]


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def collect_environment() -> dict:
    """Versions and hardware of this machine, for environment.json (the experiment runner writes it)."""
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = round(mem_kb / 2 ** 20, 1)
    except (OSError, StopIteration):
        memory = None
    env = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "memory_gib": memory, "allocator": allocator_in_use(),
           "packages": {p: _version(p) for p in ENV_PACKAGES}, "gpus": []}
    try:  # the code version the experiment ran with, when run from a git checkout
        root = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["poolattn_commit"] = (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        env["poolattn_commit"] = None
    try:
        import torch

        from .device import fast_bf16

        env["torch_threads"] = torch.get_num_threads()
        env["cpu_fast_bf16"] = fast_bf16(torch.device("cpu"))  # AVX512-BF16 or AMX: bf16 is then the auto dtype
        if torch.cuda.is_available():
            env["gpus"] = [f"{torch.cuda.get_device_name(i)} "
                           f"({torch.cuda.get_device_properties(i).total_memory / 2 ** 30:.0f} GiB)"
                           for i in range(torch.cuda.device_count())]
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return env
