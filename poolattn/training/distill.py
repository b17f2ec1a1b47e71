"""Distillation from a sentence-transformers teacher, an optional loss term beside InfoNCE.

OUTSIDE THE PAPER'S PROTOCOL: Tang & Yang train with InfoNCE only. A run with `distill` set is marked as such in its
config and report. The term matches the student's in-batch similarity structure to the teacher's, so the two models
need not share a width (no projection to train): `kl` is KL(teacher || student) between the row-wise softmaxes of the
query x candidate similarity matrices (teacher at its own temperature), `cosine_mse` the mean squared difference of
the two cosine-similarity matrices. Teacher vectors are computed once per text (raw text: the teacher knows no
instructions) and kept in a cache file per teacher, written atomically, so a resumed run gets identical vectors.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class DistillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: str = "all-MiniLM-L6-v2"  # a sentence-transformers folder, hub id, or the MiniLM alias
    weight: float = Field(1.0, gt=0)  # loss = InfoNCE + weight x distillation term
    kind: Literal["kl", "cosine_mse"] = "kl"
    teacher_scale: float = Field(20.0, gt=0)  # 1 / the teacher's softmax temperature (kl)
    batch_size: int = Field(64, ge=1)


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class Teacher:
    """A sentence-transformers model's normalised embeddings of training texts, cached on disk per teacher."""

    def __init__(self, settings: DistillSettings, cache_dir: str | Path | None):
        from ..evaluation.loading import fingerprint, load_model

        self.settings = settings
        self.model = load_model(settings.teacher, device="cpu")
        if hasattr(self.model, "config") and hasattr(self.model, "fingerprint"):
            raise ValueError(f"distill.teacher {settings.teacher!r} is a poolattn model; give a sentence-transformers "
                             f"model (a folder with modules.json, a hub id, or all-MiniLM-L6-v2)")
        self.path = Path(cache_dir) / f"teacher-{fingerprint(self.model)}.npz" if cache_dir else None
        self.vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path is not None and self.path.exists():
            with np.load(self.path) as f:
                self.vectors = dict(zip(f["keys"].tolist(), f["vectors"]))
            log.info("teacher cache %s: %d texts", self.path, len(self.vectors))

    def embed(self, texts: list[str]) -> torch.Tensor:
        keys = [_key(t) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if todo:
            by_key = dict(zip(keys, texts))
            out = self.model.encode([by_key[k] for k in todo], batch_size=self.settings.batch_size,
                                    normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            self.vectors.update(zip(todo, out.astype(np.float32)))
            self._dirty = True
        return torch.from_numpy(np.stack([self.vectors[k] for k in keys]))

    def save(self) -> None:
        """Write the cache whole (temporary file, then rename); a no-op when nothing was added."""
        if self.path is None or not self._dirty:
            return
        from ..fileio import atomic_write

        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.vectors)
        with atomic_write(self.path, "wb") as f:
            np.savez(f, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]))
        self._dirty = False


def distill_loss(query: torch.Tensor, candidates: torch.Tensor, t_query: torch.Tensor, t_candidates: torch.Tensor,
                 valid: torch.Tensor | None = None, kind: str = "kl", scale: float = 20.0,
                 teacher_scale: float = 20.0) -> torch.Tensor:
    """Student [b, D] queries and [c, D] candidates against the teacher's [b, d] and [c, d] (this process's batch);
    `valid` [c] marks real candidates (rows without a hard negative are padding)."""
    s = F.normalize(query.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    t = F.normalize(t_query.float(), dim=-1) @ F.normalize(t_candidates.float(), dim=-1).T
    t = t.to(s.device)
    if valid is None:
        valid = torch.ones(s.shape[1], dtype=torch.bool, device=s.device)
    valid = valid.to(s.device, torch.bool)
    if kind == "cosine_mse":
        return ((s - t) ** 2)[:, valid].mean()
    if kind != "kl":
        raise ValueError(f"unknown distillation kind {kind!r}; valid: kl, cosine_mse")
    log_p_student = F.log_softmax((scale * s).masked_fill(~valid, float("-inf")), dim=-1)
    p_teacher = F.softmax((teacher_scale * t).masked_fill(~valid, float("-inf")), dim=-1)
    return (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).masked_fill(~valid, 0).sum(-1).mean()
