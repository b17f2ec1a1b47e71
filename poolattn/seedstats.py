"""Seed-aware inference: is design B better than design A, or only this trained B than this trained A?

Seeds are paired across designs (seed s gives every design the same data order), so for each seed s the paired
difference d_s = metric(B_s) - metric(A_s) is measured on one shared test set. The design-level effect is the mean
of d_s over seeds. Its uncertainty has two parts:
  * seed variance: retraining with another seed moves d_s (estimated by the sample variance of d_s over seeds);
  * item variance: the test set is one sample of items, shared by every seed, so its sampling error does not
    average out over seeds (estimated by the item bootstrap of the seed-averaged difference, the same item
    resamples for every seed).
SE^2 = var(d_s) / S + var_items(mean_s d_s). This counts the per-seed part of the item noise twice (it is also in
var(d_s)), so the test errs on the conservative side; the simulation (poolattn.simulate) checks its false-positive
rate. p-value: Student t with S - 1 degrees of freedom (seed level). 95% CI: hierarchical bootstrap (resample
seeds, then items, the same item resample for all seeds). Minimum detectable effect at 80% power:
(t_{1-alpha/2} + t_{power}) * SE.

With a single seed there is no seed variance to estimate: the result is about these two trained models (item SE
only, normal tail), `level` says so, and the report says so in its first lines.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import stats as sps

POWER = 0.8


@dataclass
class SeedEffect:
    """B - A at the design level (several seeds) or for one pair of trained models (one seed)."""
    n_seeds: int
    diff: float  # mean over seeds of the paired difference
    ci_low: float
    ci_high: float
    p_value: float | None
    se: float
    seed_sd: float | None  # SD over seeds of the paired difference (None with one seed)
    item_se: float  # item-sampling SE of the seed-averaged difference
    mde: float  # smallest |effect| detected with 80% power at alpha (two-sided), for this many seeds and items
    level: str  # "design" (seeds >= 2) | "models" (one seed: about these trained models)
    per_seed: list[float] = field(default_factory=list)
    p_holm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def flip(self) -> "SeedEffect":
        return replace(self, diff=-self.diff, ci_low=-self.ci_high, ci_high=-self.ci_low,
                       per_seed=[-d for d in self.per_seed])


def _quantiles(n_seeds: int, alpha: float, power: float) -> float:
    """t_{1-alpha/2} + t_{power} with S - 1 degrees of freedom (normal for one seed)."""
    dist = sps.norm if n_seeds < 2 else sps.t(n_seeds - 1)
    return float(dist.ppf(1 - alpha / 2) + dist.ppf(power))


def minimum_detectable_effect(seed_sd: float | None, item_se: float, n_seeds: int, alpha: float = 0.05,
                              power: float = POWER) -> float:
    """The effect a two-sided test at alpha detects with the given power, for n_seeds seeds: planning for a budget.
    With one seed the seed variance is not estimable, so the design-level MDE is infinite unless seed_sd is None
    (then it is the MDE for the trained models)."""
    if n_seeds < 2:
        return float(_quantiles(1, alpha, power) * item_se) if seed_sd is None else float("inf")
    return _quantiles(n_seeds, alpha, power) * float(np.sqrt(seed_sd ** 2 / n_seeds + item_se ** 2))


def seed_effect(per_seed: np.ndarray, item_boot: np.ndarray, alpha: float = 0.05, confidence: float = 0.95,
                power: float = POWER, seed: int = 0) -> SeedEffect:
    """per_seed: observed d_s [S]; item_boot: item-bootstrap draws of d_s [S, R] (row r: the same item resample for
    every seed). Returns the design-level effect, hierarchical-bootstrap CI, seed-level p and MDE (see module doc)."""
    d = np.asarray(per_seed, float)
    boot = np.asarray(item_boot, float).reshape(len(d), -1)
    n, r = boot.shape
    diff = float(d.mean())
    item_se = float(np.nanstd(boot.mean(0), ddof=1)) if r > 1 else 0.0
    seed_sd = float(np.std(d, ddof=1)) if n > 1 else None
    se = float(np.sqrt((seed_sd ** 2 / n if seed_sd is not None else 0.0) + item_se ** 2))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, (r, n)) if n > 1 else np.zeros((r, 1), int)
    # centre each seed's item bootstrap on its observed d_s, then add the resampled seeds' observed values
    centred = boot - np.nanmean(boot, 1, keepdims=True)
    hier = d[picks].mean(1) + centred[picks, np.arange(r)[:, None]].mean(1)
    q = (1 - confidence) / 2
    lo, hi = (np.nanquantile(hier, [q, 1 - q]) if np.isfinite(hier).any() else (np.nan, np.nan))
    if se == 0 or not np.isfinite(se):
        p = 1.0 if diff == 0 else (0.0 if se == 0 else None)
    elif n > 1:
        p = float(2 * sps.t(n - 1).sf(abs(diff) / se))
    else:
        p = float(2 * sps.norm.sf(abs(diff) / se))
    mde = _quantiles(n, alpha, power) * se
    return SeedEffect(n, diff, float(lo), float(hi), p, se, seed_sd, item_se, float(mde),
                      "design" if n > 1 else "models", d.tolist())
