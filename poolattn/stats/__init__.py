"""Statistics for comparing embedding models and designs (numbers in, numbers out; no I/O, no rendering).

    paired.py    tests of two models on one dataset from per-item scores: paired bootstrap / permutation, CIs
    multiple.py  a family of comparisons: Wilcoxon signed-rank over datasets, Holm's adjustment, win/tie/loss
    seeds.py     tests over seeds (the designs, not one trained model each): effect, SE, CI, p, detectable effect
    simulate.py  calibration by simulation: false-positive rate and power of the tests above
"""
