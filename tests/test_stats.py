import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import average_precision_score

from poolattn.stats.multiple import holm, holm_adjust, significance, wilcoxon_test, win_tie_loss
from poolattn.stats.paired import Items, PairedResult, _boot_diffs, _Swapper, paired_test

METRICS = ["spearman", "ap", "accuracy", "ndcg_at_10", "v_measure"]


def design(metric: str, skill: float, seed: int, n: int = 300) -> Items:
    """Synthetic per-item results; items (gold, query difficulty) are shared, noise depends on `seed`."""
    shared, rng = np.random.default_rng(0), np.random.default_rng(seed)
    if metric == "spearman":
        gold = np.round(shared.uniform(0, 5, n) * 5) / 5  # ties in gold, as in STS
        return Items(metric, gold=gold, pred=gold / 5 + rng.normal(0, 0.4 * 2.0 ** -skill, n))
    if metric == "ap":
        gold = (shared.random(n) < 0.4).astype(int)
        return Items(metric, gold=gold, pred=0.3 * gold + rng.normal(0, 0.3 * 2.0 ** -skill, n))
    if metric == "accuracy":
        gold = shared.integers(0, 4, n)
        right = rng.random(n) < 0.5 + 0.15 * skill
        return Items(metric, gold=gold, pred=np.where(right, gold, (gold + 1) % 4))
    if metric == "v_measure":
        return Items(metric, scores=shared.uniform(0.3, 0.4, 10) + 0.05 * skill + rng.normal(0, 0.01, 10))
    return Items(metric, ids=[f"q{i}" for i in range(n)],
                 scores=np.clip(shared.beta(2, 3, n) + 0.1 * skill + rng.normal(0, 0.05, n), 0, 1))


@pytest.mark.parametrize("metric", METRICS)
def test_identical_designs_are_not_significant(metric):
    a = design(metric, 0.0, seed=1)
    r = paired_test(a, design(metric, 0.0, seed=1), n_resamples=200)
    assert r.diff == 0 and r.p_value == 1.0 and r.ci_low == 0 == r.ci_high
    assert significance(r) == 0


@pytest.mark.parametrize("metric", METRICS)
def test_shifted_design_is_detected_both_ways(metric):
    a, b = design(metric, 0.0, seed=1), design(metric, 2.0, seed=2)
    r = paired_test(a, b, n_resamples=300, seed=3)
    assert r.diff > 0.05 and r.ci_low > 0 and r.score_b - r.score_a == pytest.approx(r.diff)
    assert r.p_value < (0.01 if metric == "v_measure" else 1e-4)
    assert r.score_a == pytest.approx(a.score()) and r.n_items == len(a)
    back = paired_test(b, a, n_resamples=300, seed=3)
    assert back.diff == pytest.approx(-r.diff) and back.ci_high < 0 and back.p_value == pytest.approx(r.p_value,
                                                                                                      rel=0.3)
    flipped = r.flip()
    assert flipped.diff == -r.diff and (flipped.ci_low, flipped.ci_high) == (-r.ci_high, -r.ci_low)


def test_score_matches_reference_implementations():
    sts, pair = design("spearman", 0, 1), design("ap", 0, 1)
    assert sts.score() == pytest.approx(sps.spearmanr(sts.gold, sts.pred).statistic)
    assert pair.score() == pytest.approx(average_precision_score(pair.gold, pair.pred))
    acc = design("accuracy", 0, 1)
    assert acc.score() == pytest.approx(np.mean(acc.pred == acc.gold))


@pytest.mark.parametrize("kind", ["spearman", "ap"])
def test_fast_resampling_equals_recomputing_the_metric(kind):
    """The sort-once bootstrap (item counts) and swap (union masks) statistics equal scipy/sklearn on explicit
    resamples, ties included."""
    rng = np.random.default_rng(4)
    n = 120
    gold = np.round(rng.random(n) * 10) / 2 if kind == "spearman" else (rng.random(n) < 0.4).astype(float)
    a, b = np.round(gold + rng.normal(0, 2, n), 1), np.round(gold + rng.normal(0, 1.5, n), 1)  # ties in preds
    metric = (lambda g, p: sps.spearmanr(g, p).statistic) if kind == "spearman" else average_precision_score
    idx = rng.integers(0, n, (6, n))
    W = np.stack([np.bincount(i, minlength=n) for i in idx]).astype(np.int32)
    expected = [metric(gold[i], b[i]) - metric(gold[i], a[i]) for i in idx]
    assert np.allclose(_boot_diffs(kind, gold, a, b, W), expected, atol=1e-12)
    S = rng.random((6, n)) < 0.5
    expected = [metric(gold, np.where(s, a, b)) - metric(gold, np.where(s, b, a)) for s in S]
    assert np.allclose(_Swapper(kind, gold, a, b)(S), expected, atol=1e-12)


@pytest.mark.parametrize("metric", ["spearman", "ndcg_at_10"])
def test_null_p_values_are_calibrated(metric):
    """Two designs of equal quality: about 10% of p-values fall below 0.1 (a wrong null spread would give ~0 or
    ~40%), and the normal-tail p agrees with the Monte Carlo permutation p."""
    ps, gaps = [], []
    for rep in range(150):
        r = paired_test(design(metric, 0.0, 2 * rep + 10, n=80), design(metric, 0.0, 2 * rep + 11, n=80),
                        n_resamples=200, seed=rep)
        ps.append(r.p_value)
        gaps.append(abs(r.p_value - r.p_mc))
    assert 0.03 <= np.mean(np.array(ps) < 0.1) <= 0.2
    assert np.median(gaps) < 0.03


def test_few_items_are_enumerated_exactly():
    a = Items("v_measure", scores=np.array([0.30, 0.31, 0.32, 0.33, 0.34]))
    r = paired_test(a, Items("v_measure", scores=a.scores + 0.01), n_resamples=100)
    assert r.method == "exact" and r.p_value == pytest.approx(2 / 2 ** 5)  # every run better: 2 of 32 patterns
    b = Items("v_measure", scores=a.scores + np.array([0.01, 0.02, 0.0, 0.0, 0.03]))  # two ties: 3 items count
    assert paired_test(a, b).p_value == pytest.approx(2 / 2 ** 3)


def test_alignment_by_ids_and_input_errors():
    a = design("ndcg_at_10", 0, 1, n=50)
    b = design("ndcg_at_10", 1, 2, n=50)
    perm = np.random.default_rng(0).permutation(50)[:40]  # shuffled, and 10 queries missing
    b_shuffled = Items("ndcg_at_10", ids=[b.ids[i] for i in perm], scores=b.scores[perm])
    kept = Items("ndcg_at_10", ids=[a.ids[i] for i in perm], scores=a.scores[perm])
    assert paired_test(a, b_shuffled).diff == pytest.approx(paired_test(kept, b_shuffled).diff)
    assert paired_test(a, b_shuffled).n_items == 40
    with pytest.raises(ValueError, match="different gold"):
        sts = design("spearman", 0, 1)
        paired_test(sts, Items("spearman", gold=sts.gold[::-1], pred=sts.pred))
    with pytest.raises(ValueError, match="no ids"):
        paired_test(Items("v_measure", scores=np.ones(3)), Items("v_measure", scores=np.ones(4)))
    with pytest.raises(ValueError, match="valid:.*ndcg_at_10"):
        Items("pearson", gold=np.ones(3), pred=np.ones(3))


def test_holm_hand_worked_example():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max so far 0.06
    adj = holm([0.01, 0.04, 0.03, 0.005])
    assert np.allclose(adj, [0.03, 0.06, 0.06, 0.02])
    # at alpha 0.05 the step-down stops at 0.03 (> 0.05/2), so 0.04 is not rejected though 0.04 < 0.05/1
    assert list(adj < 0.05) == [True, False, False, True]
    adj = holm([0.2, None, 0.01, float("nan")])  # missing tests are outside the family (m = 2)
    assert np.allclose(adj[[0, 2]], [0.2, 0.02]) and np.isnan(adj[[1, 3]]).all()
    p = np.random.default_rng(0).random(20) / 10
    adj = holm(p)
    assert (adj >= p).all() and (adj <= np.minimum(1, 20 * p)).all()


def test_wilcoxon_too_few_datasets_says_so():
    r = wilcoxon_test([0.5, 0.6, 0.7, 0.8], [0.6, 0.7, 0.8, 0.9])
    assert not r.reachable and r.p_value == pytest.approx(0.125) and r.min_p == pytest.approx(0.125)
    assert r.note == "cannot reach p<0.05 with n=4 datasets; min achievable p=0.125"
    assert r.mean_diff == pytest.approx(0.1) and r.wins == 4


def test_wilcoxon_detects_a_shift_with_enough_datasets():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.8, 8)
    r = wilcoxon_test(a, a + rng.uniform(0.01, 0.05, 8))
    assert r.reachable and r.note == "" and r.p_value == pytest.approx(2 / 2 ** 8)
    same = wilcoxon_test(a, a)
    assert same.p_value is None and same.note == "no differences over n=8 datasets" and significance(same) == 0
    mixed = wilcoxon_test(a, a + rng.normal(0, 0.02, 8))
    assert mixed.p_value > 0.05


def test_holm_family_leaves_out_tests_that_cannot_reach_alpha():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.4, 0.8, 8)
    strong, small = wilcoxon_test(a, a + 0.03), wilcoxon_test(a[:3], a[:3] + 0.03)
    holm_adjust([strong, small])
    assert strong.p_holm == pytest.approx(strong.p_value) and small.p_holm is None
    assert significance(strong) == 1 and significance(strong.flip()) == -1 and significance(small) == 0


def test_win_tie_loss_counts():
    def res(diff, p):
        return PairedResult("spearman", 100, 0.5, 0.5 + diff, diff, diff - 0.01, diff + 0.01, p, p, "normal", 100, p)

    tests = {("A", "B", "t1"): res(0.1, 0.001), ("A", "B", "t2"): res(-0.1, 0.001), ("A", "B", "t3"): res(0.1, 0.2),
             ("A", "C", "t1"): res(-0.2, 0.0001)}
    m = win_tie_loss(tests, ["A", "B", "C"])
    assert m["B"]["A"] == [1, 1, 1] and m["A"]["B"] == [1, 1, 1]
    assert m["A"]["C"] == [1, 0, 0] and m["C"]["A"] == [0, 0, 1] and m["B"]["C"] == [0, 0, 0]


def test_several_parts_are_averaged():
    """A dataset scored as the mean over parts (mteb subsets): effect = mean of per-part effects."""
    a = [design("spearman", 0.0, 1, n=150), design("spearman", 0.0, 3, n=100)]
    b = [design("spearman", 1.5, 2, n=150), design("spearman", 1.5, 4, n=100)]
    r = paired_test(a, b, n_resamples=200)
    per_part = [paired_test(x, y, n_resamples=200).diff for x, y in zip(a, b)]
    assert r.diff == pytest.approx(np.mean(per_part)) and r.n_items == 250 and r.method == "normal"
    assert r.p_value < 1e-4 and r.ci_low > 0
    same = paired_test(a, a, n_resamples=200)
    assert same.diff == 0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="parts"):
        paired_test(a, b[:1])
