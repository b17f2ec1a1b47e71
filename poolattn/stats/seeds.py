"""Seed-aware inference: is design B better than design A, or only this trained B than this trained A?

Seeds are paired across designs (seed s gives every design the same data order), so for each seed s the paired
difference d_s = metric(B_s) - metric(A_s) is measured on one shared test set. The design-level effect is the mean
of d_s over seeds. Model: d_s = delta + u_s + c + e_s, with
  * u_s: seed noise (retraining with another seed moves the difference);
  * c: item noise shared by every seed (the test set is one sample of items, and an item that is hard for B is
    hard for every seed of B): it does not average out over seeds;
  * e_s: item noise of seed s alone (which items this particular trained pair gets right).
var(mean d) = var(u)/S + var(c) + var(e)/S. The sample variance of d_s over seeds estimates var(u) + var(e), so
SE^2 = var(d_s)/S + var(c) counts every part once. var(c) comes from the joint item bootstrap (row r of every
seed: the same item resample): the variance over r of the seed-averaged draw is var(c) + var(e)/S, and the mean
over r of the variance across seeds of the centred draws is var(e) (c cancels there), so
var(c) = var_r(mean_s) - mean_r(var_s)/S (clipped at 0). (The earlier SE^2 = var(d_s)/S + var_r(mean_s) counted
var(e)/S twice: conservative, with little power at three seeds.)

p-value and CI: Student t with Welch-Satterthwaite degrees of freedom, df = SE^4 / ((var(d_s)/S)^2 / (S - 1) +
sd(var(c) estimate)^2 / 2): S - 1 when the seeds dominate, more when a well-estimated shared item part does (with
df fixed at S - 1 a large shared item part made the test conservative; without the second term a var(c) that is
mostly resampling noise made it liberal, 9% at alpha 5% in the simulation). The CI is diff +- t * SE, so it
excludes 0 exactly when p < 1 - confidence (a percentile bootstrap over three seeds cannot reach beyond the seeds'
own range and undercovers). poolattn.stats.simulate checks the false-positive rate. Minimum detectable effect at 80% power: (t_{1-alpha/2} + t_{power}) * SE.

With a single seed there is no seed variance to estimate: the result is about these two trained models (the item
SE of the one pair, normal tail), `level` says so, and the report says so in its first lines.
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
    seed_sd: float | None  # SD over seeds of the paired difference (None with one seed); holds each seed's own items
    item_se: float  # item SE shared by every seed (one seed: the pair's whole item SE)
    mde: float  # smallest |effect| detected with 80% power at alpha (two-sided), for this many seeds and items
    level: str  # "design" (seeds >= 2) | "models" (one seed: about these trained models)
    per_seed: list[float] = field(default_factory=list)
    p_holm: float | None = None
    df: float | None = None  # degrees of freedom of the t reference (None: normal)

    def to_dict(self) -> dict:
        return asdict(self)

    def flip(self) -> SeedEffect:
        return replace(self, diff=-self.diff, ci_low=-self.ci_high, ci_high=-self.ci_low,
                       per_seed=[-d for d in self.per_seed])


def _dist(df: float | None):
    return sps.norm if df is None or not np.isfinite(df) else sps.t(df)


def satterthwaite_df(seed_sd: float | None, item_se: float, n_seeds: int, item_var_sd: float = 0.0) -> float | None:
    """Welch-Satterthwaite degrees of freedom of SE^2 = seed_sd^2/S + item_se^2; the seed part has S - 1, the item
    part's estimate has SD item_var_sd (0: known). None = normal."""
    if n_seeds < 2 or seed_sd is None or seed_sd == 0:
        return None
    a = seed_sd ** 2 / n_seeds
    return float((a + item_se ** 2) ** 2 / (a ** 2 / (n_seeds - 1) + item_var_sd ** 2 / 2))


def _mde(se: float, df: float | None, alpha: float, power: float) -> float:
    dist = _dist(df)
    return float((dist.ppf(1 - alpha / 2) + dist.ppf(power)) * se)


def minimum_detectable_effect(seed_sd: float | None, item_se: float, n_seeds: int, alpha: float = 0.05,
                              power: float = POWER) -> float:
    """The effect a two-sided test at alpha detects with the given power, for n_seeds seeds: planning for a budget.
    seed_sd: SD over seeds of the paired difference; item_se: the item SE shared by all seeds. With one seed the
    seed variance is not estimable, so the design-level MDE is infinite unless seed_sd is None (then it is the MDE
    for the trained models)."""
    if n_seeds < 2:
        return _mde(item_se, None, alpha, power) if seed_sd is None else float("inf")
    se = float(np.sqrt(seed_sd ** 2 / n_seeds + item_se ** 2))
    return _mde(se, satterthwaite_df(seed_sd, item_se, n_seeds), alpha, power)


def item_components(item_boot: np.ndarray) -> tuple[float, float]:
    """(shared item variance var(c), SD of that estimate) from joint item-bootstrap draws [S, R]. The SD is the
    resampling error of the two variances it is the difference of (each ~ chi^2 on R - 1 df, counted as
    independent, which overstates it: they are positively correlated), so a var(c) that is mostly noise does not
    buy degrees of freedom."""
    boot = np.asarray(item_boot, float)
    n, r = boot.shape
    if r < 2:
        return 0.0, 0.0
    of_mean = float(np.nanvar(boot.mean(0), ddof=1))
    if n < 2:
        return of_mean, 0.0
    own = float(np.nanmean(np.var(boot - np.nanmean(boot, 1, keepdims=True), axis=0, ddof=1))) / n
    return max(of_mean - own, 0.0), float(np.sqrt(2 * (of_mean ** 2 + own ** 2) / (r - 1)))


def seed_effect(per_seed: np.ndarray, item_boot: np.ndarray, alpha: float = 0.05, confidence: float = 0.95,
                power: float = POWER) -> SeedEffect:
    """per_seed: observed d_s [S]; item_boot: item-bootstrap draws of d_s [S, R] (row r: the same item resample for
    every seed). Returns the design-level effect, t CI, seed-level p and MDE (see module doc)."""
    d = np.asarray(per_seed, float)
    n = len(d)
    shared, shared_sd = item_components(np.asarray(item_boot, float).reshape(n, -1))
    diff = float(d.mean())
    item_se = float(np.sqrt(shared))
    seed_sd = float(np.std(d, ddof=1)) if n > 1 else None
    se = float(np.sqrt((seed_sd ** 2 / n if seed_sd is not None else 0.0) + shared))
    df = satterthwaite_df(seed_sd, item_se, n, shared_sd)
    dist = _dist(df)
    if se == 0 or not np.isfinite(se):
        p = 1.0 if diff == 0 else (0.0 if se == 0 else None)
    else:
        p = float(2 * dist.sf(abs(diff) / se))
    half = float(dist.ppf(1 - (1 - confidence) / 2) * se) if np.isfinite(se) else float("nan")
    return SeedEffect(n, diff, diff - half, diff + half, p, se, seed_sd, item_se, _mde(se, df, alpha, power),
                      "design" if n > 1 else "models", d.tolist(), df=df)
