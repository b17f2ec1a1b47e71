"""Checkpoint files: what a checkpoint folder holds (trainable weights, optimizer, scheduler, trainer state, each
process's RNG states), atomic commit of a fully written folder, and the list of complete checkpoints."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import write_failed
from ..fileio import share_modes
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
    share_modes(tmp)  # safetensors writes 0600 files: give them the umask's modes like every other output
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


def write_state(folder: Path, rank: int, model: EmbeddingModel | None, optimizer, scheduler,
                trainer_state: dict[str, Any]) -> None:
    """Write one process's share of a checkpoint into a (temporary) folder: its RNG states, and with `model` (the
    process that writes the run folder) the trainable weights, optimizer, scheduler and trainer state."""
    from safetensors.torch import save_file

    torch.save(rng_state(), folder / f"rng_state_{rank}.pt")
    if model is None:
        return
    state = {k: v.detach().contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    save_file(state, str(folder / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))


def read_state(folder: Path, rank: int, model: EmbeddingModel, optimizer,
               scheduler) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load a checkpoint's weights, optimizer and scheduler in place; return its trainer state and this process's
    RNG states (None when it was saved by fewer processes than resume it)."""
    from safetensors.torch import load_file

    state = json.loads((folder / "trainer_state.json").read_text())
    load_trainable_state(model, load_file(str(folder / "trainable.safetensors")))
    # Loaded to the CPU, moved by load_state_dict to each parameter's device: under a multi-node launcher the
    # saved storages are tagged "cpu:0", which map_location=<the process's device> cannot restore.
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = folder / f"rng_state_{rank}.pt"
    # our own file; it holds numpy / python RNG tuples, which weights_only cannot load
    return state, torch.load(rng, weights_only=False) if rng.exists() else None


def save(run_dir: Path, step: int, rank: int, writer: bool, model: EmbeddingModel, optimizer, scheduler,
         trainer_state: dict[str, Any], keep_last: int, barrier) -> Path:
    """Write <run_dir>/checkpoints/step-NNNNNN whole or not at all (every process writes its RNG states, `writer` the
    rest) and keep the newest `keep_last`; `barrier` waits for every process (accelerate's wait_for_everyone)."""
    name = f"step-{step:06d}"
    final, tmp = run_dir / "checkpoints" / name, run_dir / "checkpoints" / f"{TMP_PREFIX}{name}"
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:  # a failed write (full disk: torch says only "iostream error") names the checkpoint and the reason
        write_state(tmp, rank, model if writer else None, optimizer, scheduler, trainer_state)
    except (OSError, RuntimeError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(tmp, err) from err
    barrier()
    if writer:
        commit(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            remove(old)
    barrier()
    return final
