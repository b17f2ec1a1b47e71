"""Matryoshka widths (Kusupati et al. 2022, sentence-transformers' MatryoshkaLoss): the leading components of an
embedding, cut to a width and L2-renormalised. One truncation for serving (`dimensions`) and evaluation
(`poolattn eval --dimensions`); the training loss over several widths is poolattn.training.losses.matryoshka_loss.

A model trained with `matryoshka_dims` records the widths it was trained at in ModelConfig.matryoshka_dims (its full
width last); any other width (and every width below the full one of a model without that record) is a plain
truncation: still answered, but marked untrained wherever it is served or scored.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def truncate_dims(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first `dimensions` components of each row, L2-renormalised; None or the full width: `vectors` as they
    are."""
    if dimensions is None or dimensions == vectors.shape[-1]:
        return vectors
    cut = vectors[..., :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=-1, keepdims=True), 1e-12)


def check_widths(dims: Sequence[int], width: int | None = None, what: str = "matryoshka_dims") -> None:
    """`dims` positive, strictly increasing and at most the model's `width` (None: not known yet); ValueError naming
    `what` otherwise."""
    dims = list(dims)
    if not dims:
        raise ValueError(f"{what}: give at least one width (e.g. [64, 128, 256]) or leave it unset")
    if any(d < 1 for d in dims) or any(b <= a for a, b in zip(dims, dims[1:])):
        raise ValueError(f"{what} must be positive and increasing, e.g. [64, 128, 256]; got {dims}")
    if width is not None and dims[-1] > width:
        raise ValueError(f"{what} {dims}: {dims[-1]} is above the model's embedding width {width}")


def trained_widths(config, width: int) -> list[int] | None:
    """The widths `config` (a ModelConfig) records as trained, the full `width` last; None: not Matryoshka-trained
    (only the full width was)."""
    dims = getattr(config, "matryoshka_dims", None)
    return None if not dims else sorted(set(dims) | {width})


def is_trained_width(config, width: int, dimensions: int | None) -> bool:
    """Whether vectors cut to `dimensions` (None: the full width) are a width the model was trained at."""
    if dimensions is None or dimensions == width:
        return True
    return dimensions in (trained_widths(config, width) or ())


def describe(config, width: int) -> str:
    """One line on which `dimensions` a model was trained for (the server's startup log, eval's console)."""
    trained = trained_widths(config, width)
    if trained is None:
        return (f"{width} dimensions; not Matryoshka-trained: a shorter `dimensions` is a plain truncation "
                f"(renormalised), weaker than the full vector")
    return (f"{width} dimensions; Matryoshka-trained widths {', '.join(map(str, trained))}: other widths are a plain "
            f"truncation (renormalised), untrained")
