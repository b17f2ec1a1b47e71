"""The one place that says which process this is: (rank, world size) of the process group when one is open, else
what a launcher (torchrun, accelerate launch) put in RANK / WORLD_SIZE before any group exists, else (0, 1)."""
from __future__ import annotations

import os

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on the process that writes shared files and prints (rank 0)."""
    return world()[0] == 0
