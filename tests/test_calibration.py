"""Calibration of the report's tests by simulation (poolattn.stats.simulate). About the tests, not about any trained
model: under identical designs each test rejects at most alpha of the time (within 2.5 simulation SEs), and a real
shift is detected far more often than alpha."""
import pytest

from poolattn.stats.simulate import KINDS, paired_rates, seed_rates, wilcoxon_rates

ALPHA = 0.05


def _check(rates, min_power):
    tol = 2.5 * rates.se(ALPHA)
    assert rates.false_positive <= ALPHA + tol, rates
    assert rates.power >= min_power, rates


@pytest.mark.parametrize("kind", KINDS)
def test_paired_test_is_calibrated_and_detects_a_shift(kind):
    _check(paired_rates(kind, reps=120, n=200, shift=0.6, n_resamples=100, seed=1), min_power=0.3)


@pytest.mark.parametrize("item_shared, min_power", [(0.0, 0.5), (0.5, 0.4)])
def test_seed_level_test_is_calibrated_and_detects_a_shift(item_shared, min_power):
    """Seeds that err on different items (0) and designs whose item errors every seed repeats (0.5): the shared part
    does not average out over seeds, so less power, but the false-positive rate stays <= alpha in both. (Before the
    variance decomposition counted each seed's item noise once: 0 false positives and 3% power at 0.)"""
    _check(seed_rates(reps=80, n_seeds=3, n=150, shift=0.4, n_resamples=100, seed=2, item_shared=item_shared),
           min_power=min_power)


def test_wilcoxon_is_calibrated_and_detects_a_shift():
    _check(wilcoxon_rates(reps=120, n=100, shift=0.7, seed=3), min_power=0.3)
