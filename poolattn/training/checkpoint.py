"""Checkpoint files: atomic commit of a fully written folder, the list of complete checkpoints, RNG states and
the trainable weights of an EmbeddingModel."""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model import EmbeddingModel


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


MARKER = "COMPLETE"  # written last into a checkpoint folder: only a folder that has it is resumed from
REQUIRED = ("trainer_state.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt")
TMP_PREFIX = ".tmp-"  # a save, a replacement or a pruning in progress; removed at the next start


def commit(tmp: Path, final: Path) -> None:
    """Make a fully written temporary checkpoint folder visible under its final name in one rename; the
    completeness marker is its last file."""
    (tmp / MARKER).write_text("")
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove(checkpoint: Path) -> None:
    """Delete a checkpoint so that a kill at any instant leaves it whole or gone: renamed away first."""
    doomed = checkpoint.with_name(f"{TMP_PREFIX}del-{checkpoint.name}")
    os.replace(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove the temporary folders that killed saves and prunings left in a run folder (checkpoints/.tmp-*, and
    .final.tmp-* from an interrupted save of the final model); return what was removed."""
    run_dir = Path(run_dir)
    stale = [*(run_dir / "checkpoints").glob(f"{TMP_PREFIX}*"), *run_dir.glob(".final.tmp-*")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def is_complete(checkpoint: Path) -> bool:
    """The marker is there (or, for checkpoints saved before markers existed, every required file is)."""
    return (checkpoint / MARKER).exists() or all((checkpoint / f).exists() for f in REQUIRED)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if is_complete(p)]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def load_trainable_state(model: EmbeddingModel, state: dict[str, torch.Tensor]) -> None:
    """Inverse of EmbeddingModel.trainable_state_dict: copy pooler and LoRA (or full backbone) weights in place."""
    expected = set(model.trainable_state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.pooler.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("pooler.")})
    backbone = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
    if backbone:
        model.backbone.load_state_dict(backbone, strict=False)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
