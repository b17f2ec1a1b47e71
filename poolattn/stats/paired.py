"""Per-dataset significance tests for comparing embedding designs: paired tests on per-item scores with effect sizes
and 95% CIs (the tests over a family of datasets or design pairs, Wilcoxon and Holm, are in poolattn.stats.multiple).

Per-dataset test of B against A on the same items (effect = metric(B) - metric(A), the metric recomputed from items):
  * p-value: paired permutation test, i.e. swap A's and B's prediction (for Spearman and AP: each design's rank
    of the item, so both live on one scale) on random items (a sign flip of the per-item
    difference for mean metrics) and recompute the metric difference. When all 2^n_eff swap patterns fit in
    max(n_resamples, 4096) (n_eff = items where A and B differ, e.g. 10 clustering runs) the null is enumerated and
    the p-value is exact; otherwise it is the two-sided normal tail of the observed effect over the null's spread (the
    null is symmetric about 0, and close to normal over many items). Why not the Monte Carlo count: its floor
    1/(n_resamples+1) can never pass Holm over ~100 comparisons at 1000 resamples. The Monte Carlo p is kept as `p_mc`.
  * 95% CI: paired percentile bootstrap over items (the same resampled items for A and B, metric recomputed).
Resampling is written here rather than with scipy.stats.permutation_test/bootstrap because those materialise and
re-sort every resample (Spearman, AP): ~8 s per comparison on SICK-R, ~2 s here. Here a bootstrap resample is a
vector of item counts and a swap pattern a boolean mask, so the items are sorted once and each resample costs a few
cumulative sums.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
# per-item score lists (any other name with `scores` is averaged too)
MEAN_METRICS = {"ndcg_at_10", "map_at_10", "map_at_1000", "recall_at_10", "v_measure", "mean_accuracy"}
PRED_METRICS = {"spearman", "ap", "accuracy"}  # recomputed from gold + per-item predictions
METRICS = sorted(MEAN_METRICS | PRED_METRICS)
EXACT_UP_TO = 4096  # enumerate the permutation null exactly up to this many swap patterns (12 differing items)
_CHUNK = 4_000_000  # elements per resampling batch: bounds memory (~100 MB of temporaries)


@dataclass
class Items:
    """Per-item results of one design on one task: `gold` + `pred` (spearman | ap | accuracy) or `scores` (mean
    metrics: per-query nDCG@10, per-run V-measure); `ids` (optional) pairs items across designs."""
    metric: str
    gold: np.ndarray | None = None
    pred: np.ndarray | None = None
    scores: np.ndarray | None = None
    ids: list | None = None

    def __post_init__(self):
        if self.metric in PRED_METRICS:
            if self.gold is None or self.pred is None or len(self.gold) != len(self.pred):
                raise ValueError(f"metric {self.metric!r} needs `gold` and `pred` of equal length")
        elif self.scores is None:
            raise ValueError(f"unknown metric {self.metric!r} without per-item `scores`; valid: {METRICS}")
        n = len(self)
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} ids for {n} items")
        if n == 0:
            raise ValueError("no items")

    def __len__(self) -> int:
        return len(self.scores if self.scores is not None else self.pred)

    def score(self) -> float:
        """The task metric over all items."""
        return float(_observed(_kind(self.metric), *_arrays(self)))


def _kind(metric: str) -> str:
    return metric if metric in ("spearman", "ap") else "mean"


def _arrays(it: Items):
    """(gold, values) of one design: values are per-item scores (mean kind: per-example correctness for accuracy)
    or predictions (spearman, ap); gold is None for score lists."""
    gold = None if it.gold is None else np.asarray(it.gold)
    if it.metric == "accuracy":
        return gold, (np.asarray(it.pred) == gold).astype(float)
    if _kind(it.metric) == "mean":
        return None, np.asarray(it.scores, float)
    return gold.astype(float), np.asarray(it.pred, float)


def align(a: Items, b: Items) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(gold, values_a, values_b) on the items both designs scored; ids pair items when both have them."""
    if a.metric != b.metric:
        raise ValueError(f"cannot compare metric {a.metric!r} with {b.metric!r}")
    (ga, va), (gb, vb) = _arrays(a), _arrays(b)
    if a.ids is not None and b.ids is not None:
        pos_b = {k: i for i, k in enumerate(b.ids)}
        ia = [i for i, k in enumerate(a.ids) if k in pos_b]
        if not ia:
            raise ValueError("the two designs share no item ids")
        ib = [pos_b[a.ids[i]] for i in ia]
        va, vb = va[ia], vb[ib]
        ga, gb = (None, None) if ga is None else (ga[ia], gb[ib])
    elif len(va) != len(vb):
        raise ValueError(f"{len(va)} vs {len(vb)} items and no ids to pair them")
    if ga is not None and not np.array_equal(ga, gb):
        raise ValueError("the two designs were scored against different gold labels")
    return (None if _kind(a.metric) == "mean" else ga), va, vb


# ---------------------------------------------------------------- metrics on one design (observed values)

def _observed(kind: str, gold, values) -> float:
    if kind == "mean":
        return float(np.mean(values))
    if kind == "spearman":
        return float(sps.spearmanr(gold, values).statistic)
    return float(_ap_boot(gold, values, np.ones((1, len(values)), np.int32))[0])


def _tie_groups(sorted_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """First and last index of each position's run of equal values in a sorted array; None when all distinct."""
    n = len(sorted_vals)
    new = np.r_[True, sorted_vals[1:] != sorted_vals[:-1]]
    if new.all():
        return None
    idx = np.arange(n)
    start = np.maximum.accumulate(np.where(new, idx, 0))
    last = np.r_[new[1:], True]
    end = np.minimum.accumulate(np.where(last, idx, n)[::-1])[::-1]
    return start, end


def _ranks2(csum: np.ndarray, counts: np.ndarray, groups) -> np.ndarray:
    """Twice the average 1-based rank (an integer), in sorted order, of items present `counts` times in each row;
    csum = cumsum(counts, axis=1). Integer cumsums and np.take keep this ~10x faster than float and fancy indexing."""
    if groups is None:
        return 2 * csum - counts + 1
    start, end = groups
    before = np.take(csum, np.maximum(start - 1, 0), axis=1)
    before[:, : int(np.sum(start == 0))] = 0
    return before + np.take(csum, end, axis=1) + 1


# ---------------------------------------------------------------- bootstrap: resample = item counts W [B, n]

def _boot_ranks(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Centred doubled ranks (2r - n - 1) of x's items within each resample (W = item counts [B, n]), item order."""
    order = np.argsort(x, kind="stable")
    Ws = np.take(W, order, axis=1)
    r = _ranks2(np.cumsum(Ws, axis=1, dtype=np.int32), Ws, _tie_groups(x[order])) - (W.shape[1] + 1)
    return np.take(r, np.argsort(order), axis=1).astype(float)


def _spearman_boot(rg: np.ndarray, rp: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Spearman on each resample from centred ranks (the resample's mean rank is always (n+1)/2)."""
    Wrp = W * rp
    return (Wrp * rg).sum(1) / np.sqrt((W * rg * rg).sum(1) * (Wrp * rp).sum(1))


def _ap_boot(gold, pred, W) -> np.ndarray:
    """Average precision (sklearn's step definition, tied scores form one threshold) on each resample."""
    order = np.argsort(-pred, kind="stable")
    Ws = np.take(W, order, axis=1)
    tp = Ws * (np.asarray(gold)[order] > 0)
    n_c, tp_c = np.cumsum(Ws, axis=1, dtype=np.int32), np.cumsum(tp, axis=1, dtype=np.int32)
    groups = _tie_groups(-pred[order])
    if groups is not None:
        n_c, tp_c = np.take(n_c, groups[1], axis=1), np.take(tp_c, groups[1], axis=1)
    prec = np.divide(tp_c, n_c, out=np.zeros(tp_c.shape), where=n_c > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (tp * prec).sum(1) / tp.sum(1)


def _boot_diffs(kind, gold, va, vb, W) -> np.ndarray:
    if kind == "mean":
        return W @ (vb - va) / W.shape[1]
    if kind == "spearman":
        rg = _boot_ranks(gold, W)
        return _spearman_boot(rg, _boot_ranks(vb, W), W) - _spearman_boot(rg, _boot_ranks(va, W), W)
    return _ap_boot(gold, vb, W) - _ap_boot(gold, va, W)


# ---------------------------------------------------------------- permutation: swap mask S [B, n] (True: swapped)

class _Swapper:
    """Metric difference d(y) - d(x) for x = where(S, b, a), y = where(S, a, b), without re-sorting: the 2n values of
    both designs are sorted once; a mask says which design each value belongs to, and cumulative counts give ranks."""

    def __init__(self, kind, gold, va, vb):
        self.kind, n = kind, len(va)
        self.n = n
        u = np.concatenate([va, vb]) if kind == "spearman" else -np.concatenate([va, vb])
        order = np.argsort(u, kind="stable")
        self.item, self.from_b = order % n, order >= n
        self.groups = _tie_groups(u[order])
        if kind == "spearman":
            rg = 2 * sps.rankdata(gold) - (n + 1)
            self.g = rg[self.item]
            self.norm = np.sqrt((rg * rg).sum())
            self.var_r = n * (n * n - 1) / 3  # sum of (2r - n - 1)^2 over r = 1..n: any tie-free ranking
        else:
            self.g = (np.asarray(gold) > 0)[self.item]
            self.n_pos = self.g.sum() / 2  # each item appears twice in the union

    def __call__(self, S: np.ndarray) -> np.ndarray:
        in_x = np.take(S, self.item, axis=1) == self.from_b
        return self._metric(~in_x) - self._metric(in_x)

    def _metric(self, member) -> np.ndarray:
        c = np.cumsum(member, axis=1, dtype=np.int32)
        if self.kind == "spearman":
            r = np.where(member, _ranks2(c, member, self.groups) - (self.n + 1), 0).astype(float)
            var_r = (r * r).sum(1) if self.groups is not None else self.var_r
            return (r @ self.g) / (self.norm * np.sqrt(var_r))
        tp = member & self.g
        tp_c = np.cumsum(tp, axis=1, dtype=np.int32)
        if self.groups is not None:
            c, tp_c = np.take(c, self.groups[1], axis=1), np.take(tp_c, self.groups[1], axis=1)
        prec = np.divide(tp_c, c, out=np.zeros(tp_c.shape), where=c > 0)
        return (tp * prec).sum(1) / self.n_pos


def _rank_scale(x: np.ndarray) -> np.ndarray:
    """Each design's predictions as average ranks / n. Spearman and AP are unchanged (both depend on the ranking
    only), but swapped values now live on one scale: swapping raw cosines of two models whose similarity scales
    differ mixes scales and makes the swap test conservative (simulated: 2.3% false positives at 5%, see
    benchmarks/calibration.py)."""
    return sps.rankdata(x) / len(x)


def _resample_counts(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """m bootstrap resamples of n items as item counts [m, n] (int32)."""
    draws = rng.integers(0, n, (m, n)) + n * np.arange(m)[:, None]
    return np.bincount(draws.ravel(), minlength=m * n).reshape(m, n).astype(np.int32)


def _in_chunks(fn, make, total: int, n: int) -> np.ndarray:
    step = max(1, _CHUNK // max(n, 1))
    return np.concatenate([fn(make(min(step, total - s))) for s in range(0, total, step)])


# ---------------------------------------------------------------- public tests

@dataclass
class PairedResult:
    """B - A on one dataset: item-level scores, effect with CI, p-values (`p_holm` is filled in by `holm_adjust`)."""
    metric: str
    n_items: int
    score_a: float
    score_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_mc: float
    method: str  # "exact" | "normal"
    n_resamples: int
    p_holm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def flip(self) -> PairedResult:
        """The same test read as A - B."""
        return replace(self, score_a=self.score_b, score_b=self.score_a, diff=-self.diff, ci_low=-self.ci_high,
                       ci_high=-self.ci_low)


def _part(a: Items, b: Items, n_resamples: int, rng: np.random.Generator, exact_ok: bool):
    """One part's (score_a, score_b, bootstrap diffs, permutation null, exact?, null sd or None, n items)."""
    gold, va, vb = align(a, b)
    kind, n = _kind(a.metric), len(va)
    sa, sb = _observed(kind, gold, va), _observed(kind, gold, vb)
    boot = _in_chunks(lambda W: _boot_diffs(kind, gold, va, vb, W), lambda m: _resample_counts(rng, m, n),
                      n_resamples, n)
    if kind != "mean":  # swap ranks, not raw similarities: both metrics depend only on each design's ranking
        va, vb = _rank_scale(va), _rank_scale(vb)
    eff = np.flatnonzero(va != vb)  # swapping an item both designs scored alike changes nothing
    swap = (lambda S: (sb - sa) + S @ (va - vb) * 2 / n) if kind == "mean" else _Swapper(kind, gold, va, vb)
    # the null is symmetric about 0 (swapping every item negates the effect); for mean metrics its sd is known
    sd = np.sqrt(np.sum((va - vb) ** 2)) / n if kind == "mean" else None
    if exact_ok and 2 ** min(len(eff), 62) <= max(n_resamples, EXACT_UP_TO):  # enumerate every swap pattern
        patterns = ((np.arange(2 ** len(eff))[:, None] >> np.arange(len(eff))) & 1).astype(bool)
        null = []
        for P in np.array_split(patterns, max(1, len(patterns) * n // _CHUNK)):
            S = np.zeros((len(P), n), bool)
            S[:, eff] = P
            null.append(swap(S))
        return sa, sb, boot, np.concatenate(null), True, sd, n
    null = _in_chunks(swap, lambda m: rng.random((m, n)) < 0.5, n_resamples, n)
    return sa, sb, boot, null, False, sd, n


def paired_test(a: Items | Sequence[Items], b: Items | Sequence[Items], n_resamples: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> PairedResult:
    """Paired permutation p-value and bootstrap CI for metric(B) - metric(A) on one dataset (see module doc).
    A dataset of several parts (mteb subsets/splits, scored as the mean over parts) is given as lists of Items:
    parts are resampled independently and their differences averaged."""
    pa, pb = ([a] if isinstance(a, Items) else list(a)), ([b] if isinstance(b, Items) else list(b))
    if len(pa) != len(pb) or not pa:
        raise ValueError(f"{len(pa)} vs {len(pb)} parts")
    rng = np.random.default_rng(seed)
    parts = [_part(x, y, n_resamples, rng, exact_ok=len(pa) == 1) for x, y in zip(pa, pb)]
    sa, sb, boot, null, exact, sds, ns = zip(*parts)
    sa, sb, boot, null = float(np.mean(sa)), float(np.mean(sb)), np.mean(boot, 0), np.mean(null, 0)
    diff = sb - sa
    q = (1 - confidence) / 2
    lo, hi = np.nanquantile(boot, [q, 1 - q]) if np.isfinite(boot).any() else (np.nan, np.nan)
    extreme = np.abs(null) >= abs(diff) - 1e-12 * max(1.0, abs(diff))
    if exact[0]:
        p = p_mc = float(extreme.mean())
    else:
        p_mc = float((extreme.sum() + 1) / (len(null) + 1))
        sd = (np.sqrt(np.sum(np.square(sds))) / len(sds) if all(v is not None for v in sds)
              else np.sqrt(np.mean(null ** 2)))
        p = 1.0 if sd == 0 else float(2 * sps.norm.sf(abs(diff) / sd))
    return PairedResult(pa[0].metric, int(sum(ns)), sa, sb, diff, float(lo), float(hi), min(1.0, p), min(1.0, p_mc),
                        "exact" if exact[0] else "normal", n_resamples)


def item_bootstrap(a: Items | Sequence[Items], b: Items | Sequence[Items], n_resamples: int = 1000,
                   seed: int = 0) -> np.ndarray:
    """Bootstrap distribution over items of metric(B) - metric(A) (mean over parts). The same seed and item count
    draw the same item resamples, so calls for several training seeds on one test set resample the items jointly."""
    pa, pb = ([a] if isinstance(a, Items) else list(a)), ([b] if isinstance(b, Items) else list(b))
    if len(pa) != len(pb) or not pa:
        raise ValueError(f"{len(pa)} vs {len(pb)} parts")
    rng = np.random.default_rng(seed)
    out = []
    for x, y in zip(pa, pb):
        gold, va, vb = align(x, y)
        kind = _kind(x.metric)
        out.append(_in_chunks(lambda W: _boot_diffs(kind, gold, va, vb, W),  # called right here: the loop variables are current
                              lambda m: _resample_counts(rng, m, len(va)), n_resamples, len(va)))
    return np.mean(out, 0)


def score_of(items: Items | Sequence[Items]) -> float:
    """The task metric: over all items, or the mean over parts."""
    return items.score() if isinstance(items, Items) else float(np.mean([i.score() for i in items]))
