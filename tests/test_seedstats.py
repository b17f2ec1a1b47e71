"""Seed-level inference (poolattn.stats.seeds) on constructed numbers: what the effect, SE, MDE and level are."""
import numpy as np
import pytest
from scipy import stats

from poolattn.stats.paired import Items, item_bootstrap, paired_test
from poolattn.stats.seeds import minimum_detectable_effect, seed_effect


def test_one_seed_is_about_the_trained_models():
    r = seed_effect(np.array([0.02]), np.random.default_rng(0).normal(0.02, 0.01, (1, 2000)))
    assert r.level == "models" and r.seed_sd is None and r.n_seeds == 1
    assert r.se == pytest.approx(0.01, rel=0.1) and r.p_value == pytest.approx(0.046, abs=0.02)
    assert r.ci_low < 0.02 < r.ci_high and r.mde == pytest.approx(2.8 * r.se, rel=0.01)


def test_seed_variance_enters_se_ci_and_p():
    rng = np.random.default_rng(1)
    d = np.array([0.03, 0.01, 0.05, 0.02])
    boot = d[:, None] + rng.normal(0, 0.001, (4, 2000))
    r = seed_effect(d, boot)
    assert r.level == "design" and r.diff == pytest.approx(0.0275) and r.seed_sd == pytest.approx(np.std(d, ddof=1))
    assert r.se == pytest.approx(np.sqrt(r.seed_sd ** 2 / 4 + r.item_se ** 2))
    assert r.item_se < 0.0005 and r.df == pytest.approx(3, rel=0.01)  # the seeds' spread, not the items'
    assert r.p_value == pytest.approx(2 * stats.t(3).sf(r.diff / r.se), rel=0.01) and r.p_value < 0.05
    assert (r.ci_low, r.ci_high) == pytest.approx(r.diff + np.array([-1, 1]) * stats.t(3).ppf(0.975) * r.se, rel=0.01)
    assert r.flip().diff == -r.diff and r.flip().ci_low == -r.ci_high


def test_item_noise_of_single_seeds_is_counted_once_and_shared_item_noise_is_kept():
    rng = np.random.default_rng(2)
    common = rng.normal(0, 0.01, 4000)  # the item resample's effect shared by every seed
    own = rng.normal(0, 0.02, (3, 4000))  # each seed's own item noise: already in the spread of d_s
    d = np.array([0.01, 0.03, 0.02])
    r = seed_effect(d, d[:, None] + common + own)
    assert r.item_se == pytest.approx(0.01, rel=0.1)  # not sqrt(0.01^2 + 0.02^2 / 3) = 0.015
    assert r.se == pytest.approx(np.sqrt(np.var(d, ddof=1) / 3 + 0.01 ** 2), rel=0.05)
    assert r.df > 2  # a well-estimated shared item part adds degrees of freedom
    assert (r.ci_low > 0) == (r.p_value < 0.05)


def test_mde_falls_with_seeds_and_is_infinite_with_one_seed_at_design_level():
    m = [minimum_detectable_effect(0.02, 0.005, s) for s in (2, 3, 5, 10)]
    assert m == sorted(m, reverse=True) and m[0] > 5 * m[-1]
    assert minimum_detectable_effect(0.02, 0.005, 1) == float("inf")
    assert minimum_detectable_effect(None, 0.005, 1) == pytest.approx(2.8 * 0.005, rel=0.01)


def test_item_bootstrap_matches_the_paired_tests_ci_and_is_joint_over_seeds():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 200)
    a, b = (Items("spearman", gold=gold, pred=gold + rng.normal(0, s, 200)) for s in (2.0, 1.0))
    boot = item_bootstrap(a, b, 500, seed=3)
    res = paired_test(a, b, 500, seed=3)
    assert np.quantile(boot, [0.025, 0.975]) == pytest.approx([res.ci_low, res.ci_high])
    c = Items("spearman", gold=gold, pred=gold + rng.normal(0, 1.5, 200))
    assert np.corrcoef(boot, item_bootstrap(a, c, 500, seed=3))[0, 1] > 0.3  # same item resamples


def test_rank_transform_keeps_the_observed_effect():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 100)
    a = Items("spearman", gold=gold, pred=gold + rng.normal(0, 2, 100))
    b = Items("spearman", gold=gold, pred=0.01 * (gold + rng.normal(0, 1, 100)))  # another similarity scale
    res = paired_test(a, b, 200)
    assert res.diff == pytest.approx(b.score() - a.score()) and 0 <= res.p_value <= 1
