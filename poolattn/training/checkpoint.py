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


def commit(tmp: Path, final: Path) -> None:
    """Make a fully written temporary checkpoint folder visible under its final name in one rename."""
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.glob("step-*") if (p / "trainer_state.json").exists()]
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
