"""Calibration by simulation: false-positive rate and power of every test the report uses, on synthetic designs
whose truth is known. Used by tests/test_calibration.py (fast) and benchmarks/calibration.py (the figures).

Identical designs draw their per-item predictions from the same distribution, but design B's similarities live on
another scale (as two trained models' cosines do): the null is true, so a calibrated test rejects at most alpha of
the time. A shifted design B predicts with less noise: the share of rejections is the power.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .multiple import wilcoxon_test
from .paired import Items, item_bootstrap, paired_test
from .seeds import seed_effect

KINDS = ("spearman", "ap", "accuracy", "ndcg_at_10")


def _gold(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "spearman":
        return np.round(rng.uniform(0, 5, n) * 5) / 5  # ties in gold, as in STS
    if kind == "ap":
        return (rng.random(n) < 0.4).astype(int)
    if kind == "accuracy":
        return rng.integers(0, 4, n)
    return rng.beta(2, 3, n)  # ndcg: per-query difficulty


def draw(kind: str, gold: np.ndarray, noise: float, scale: float, rng: np.random.Generator) -> Items:
    """One trained model's per-item results: noise = its error level (1 = reference), scale = its similarity
    scale (cosine = scale * signal + offset; metrics ignore it, the swap test must too)."""
    n = len(gold)
    if kind == "spearman":
        return Items(kind, gold=gold, pred=scale * (gold / 5 + rng.normal(0, 0.5 * noise, n)) + (1 - scale) / 2)
    if kind == "ap":
        return Items(kind, gold=gold, pred=scale * (0.3 * gold + rng.normal(0, 0.3 * noise, n)) + (1 - scale) / 2)
    if kind == "accuracy":
        right = rng.random(n) < 0.9 - 0.3 * noise
        return Items(kind, gold=gold, pred=np.where(right, gold, (gold + 1) % 4))
    return Items(kind, scores=np.clip(gold + 0.1 * (1 - noise) + rng.normal(0, 0.1, n), 0, 1))


@dataclass
class Rates:
    test: str
    reps: int
    false_positive: float  # share of rejections at alpha under identical designs
    power: float  # share of rejections at alpha under the shift

    def se(self, rate: float) -> float:
        return float(np.sqrt(max(rate * (1 - rate), 1e-9) / self.reps))


def paired_rates(kind: str, reps: int = 300, n: int = 300, shift: float = 0.8, scale: float = 0.3,
                 alpha: float = 0.05, n_resamples: int = 200, seed: int = 0) -> Rates:
    """The per-dataset paired permutation test (one trained model per design)."""
    rng = np.random.default_rng(seed)
    hits = {True: 0, False: 0}
    for _ in range(reps):
        gold = _gold(kind, n, rng)
        a = draw(kind, gold, 1.0, 1.0, rng)
        for shifted in (False, True):
            b = draw(kind, gold, shift if shifted else 1.0, scale, rng)
            hits[shifted] += paired_test(a, b, n_resamples, seed=int(rng.integers(1 << 31))).p_value < alpha
    return Rates(f"paired {kind}", reps, hits[False] / reps, hits[True] / reps)


def seed_rates(reps: int = 150, n_seeds: int = 3, n: int = 200, seed_sd: float = 0.15, shift: float = 0.75,
               alpha: float = 0.05, n_resamples: int = 200, seed: int = 0, item_shared: float = 0.0) -> Rates:
    """The seed-level test on STS-like data: each (design, seed) model's noise level moves with the seed
    (log-normal, seed_sd), the items are one shared test set; shifted: B's noise x `shift`. item_shared: SD of
    each design's own per-item errors that every seed of it repeats (relative to the reference noise; 0 = every
    seed errs on other items), the item noise that does not average out over seeds."""
    rng = np.random.default_rng(seed)
    hits = {True: 0, False: 0}
    for _ in range(reps):
        gold = _gold("spearman", n, rng)
        for shifted in (False, True):
            d, boot = [], []
            fixed_a, fixed_b = rng.normal(0, 0.5 * item_shared, (2, n))
            for _s in range(n_seeds):
                a = draw("spearman", gold, np.exp(rng.normal(0, seed_sd)), 1.0, rng)
                b = draw("spearman", gold, (shift if shifted else 1.0) * np.exp(rng.normal(0, seed_sd)), 0.3, rng)
                a.pred, b.pred = a.pred + fixed_a, b.pred + 0.3 * fixed_b
                d.append(b.score() - a.score())
                boot.append(item_bootstrap(a, b, n_resamples, seed=1))  # same item resamples for every seed
            p = seed_effect(np.array(d), np.array(boot), alpha).p_value
            hits[shifted] += p is not None and p < alpha
    return Rates(f"seed level ({n_seeds} seeds)", reps, hits[False] / reps, hits[True] / reps)


def wilcoxon_rates(reps: int = 300, n_datasets: int = 8, n: int = 150, shift: float = 0.85, alpha: float = 0.05,
                   seed: int = 0) -> Rates:
    """The paper's Wilcoxon test across datasets on per-dataset Spearman scores."""
    rng = np.random.default_rng(seed)
    hits = {True: 0, False: 0}
    for _ in range(reps):
        golds = [_gold("spearman", n, rng) for _ in range(n_datasets)]
        a = [draw("spearman", g, 1.0, 1.0, rng).score() for g in golds]
        for shifted in (False, True):
            b = [draw("spearman", g, shift if shifted else 1.0, 0.3, rng).score() for g in golds]
            p = wilcoxon_test(a, b, alpha).p_value
            hits[shifted] += p is not None and p < alpha
    return Rates(f"Wilcoxon ({n_datasets} datasets)", reps, hits[False] / reps, hits[True] / reps)
