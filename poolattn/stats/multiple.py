"""Tests over a family: the paper's Wilcoxon signed-rank test across the datasets of a category, Holm-Bonferroni over
a family of comparisons, and the win/tie/loss matrix of per-dataset results (poolattn.stats.paired tests one dataset)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import stats as sps

from .paired import ALPHA, PairedResult


def min_wilcoxon_p(n: int) -> float:
    """Smallest two-sided p the exact signed-rank test can give with n non-zero differences: all signs alike."""
    return min(1.0, 2.0 / 2 ** n)


@dataclass
class WilcoxonResult:
    """The paper's test across datasets: signed-rank on per-dataset main scores of B - A."""
    n: int  # datasets both designs have
    n_nonzero: int  # datasets where they differ (zero differences are dropped, Wilcoxon's convention)
    mean_diff: float
    wins: int  # datasets where B > A
    statistic: float | None
    p_value: float | None
    min_p: float
    reachable: bool  # can the test reach p < alpha at all with this many datasets?
    note: str
    p_holm: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def flip(self) -> WilcoxonResult:
        """The same test read as A - B (the two-sided statistic and p are symmetric)."""
        return replace(self, mean_diff=-self.mean_diff, wins=self.n_nonzero - self.wins)


def wilcoxon_test(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> WilcoxonResult:
    """scipy's signed-rank test of B - A over datasets, with an explicit note when n is too small to ever reach alpha
    (exact two-sided: the minimum p is 2/2^n, so n <= 5 datasets can never give p < 0.05)."""
    d = np.asarray(b, float) - np.asarray(a, float)
    d = d[np.isfinite(d)]
    n, nz = len(d), int(np.sum(np.abs(d) > 1e-12))
    min_p = min_wilcoxon_p(nz)
    mean_diff = float(d.mean()) if n else float("nan")
    stat = p = None
    if nz == 0:
        note = f"no differences over n={n} datasets" if n else "no datasets"
    else:
        res = sps.wilcoxon(np.where(np.abs(d) > 1e-12, d, 0.0), zero_method="wilcox")
        stat, p = float(res.statistic), float(res.pvalue)
        note = "" if min_p < alpha else (f"cannot reach p<{alpha:g} with n={nz} datasets; min achievable "
                                         f"p={min_p:.3g}")
    return WilcoxonResult(n, nz, mean_diff, int(np.sum(d > 1e-12)), stat, p, min_p, min_p < alpha, note)


def holm(pvalues: Iterable[float | None]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, controls the family-wise error rate): sort p ascending,
    p_adj(i) = max_{j<=i} min(1, (m - j + 1) p(j)). None/NaN entries are outside the family and stay NaN.
    Written here because scipy only ships Benjamini-Hochberg/Yekutieli (false_discovery_control), which control
    the false discovery rate instead, and statsmodels is not a dependency."""
    p = np.array([np.nan if v is None else v for v in pvalues], float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m:
        order = ok[np.argsort(p[ok], kind="stable")]
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def holm_adjust(results: Sequence[PairedResult | WilcoxonResult]) -> None:
    """Fill `p_holm` of a family of results in place. Wilcoxon results that cannot reach alpha are left out of the
    family (they can never be rejected, so keeping them would only cost the others power; Tarone 1990)."""
    ps = [r.p_value if getattr(r, "reachable", True) else None for r in results]
    for r, q in zip(results, holm(ps)):
        r.p_holm = None if np.isnan(q) else float(q)


def significance(r: PairedResult | WilcoxonResult, alpha: float = ALPHA) -> int:
    """+1 / -1 when B is significantly better / worse than A after Holm, else 0."""
    diff = r.diff if isinstance(r, PairedResult) else r.mean_diff
    if r.p_holm is None or r.p_holm >= alpha or not diff:
        return 0
    return 1 if diff > 0 else -1


def win_tie_loss(tests: dict[tuple[str, str, str], PairedResult], designs: Sequence[str],
                 alpha: float = ALPHA) -> dict[str, dict[str, list[int]]]:
    """matrix[row][col] = [wins, ties, losses] of design `row` against `col` over datasets; a win is a significant
    positive difference after Holm. `tests` maps (a, b, task) -> result of B - A."""
    m = {r: {c: [0, 0, 0] for c in designs if c != r} for r in designs}
    for (a, b, _task), res in tests.items():
        if a not in m or b not in m:
            continue
        s = significance(res, alpha)
        m[b][a][1 - s] += 1  # s=+1: b wins (index 0), 0: tie, -1: b loses (index 2)
        m[a][b][1 + s] += 1
    return m
