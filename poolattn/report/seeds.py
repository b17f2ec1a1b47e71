"""The design-level answer: every pair of configured designs, seeds paired (seed s of A against seed s of B), per
task and per category (the category average's difference), with poolattn.stats.seeds' effect, CI, seed-level p
and minimum detectable effect; Holm over design pairs only (one family per task level, one per category level);
the paper's Wilcoxon over the datasets of a category on seed-averaged scores. With one seed the same numbers are
about the two trained models (`level` = "models")."""
from __future__ import annotations

import itertools

import numpy as np

from ..stats.multiple import holm_adjust, wilcoxon_test
from ..stats.paired import Items, item_bootstrap, score_of
from ..stats.seeds import SeedEffect, seed_effect


def design_runs(table: dict[str, dict], runs: list[str], default_seed: int) -> dict[str, dict[int, str]]:
    """configured design -> {seed: run name}; a run that is not a replicate is its own design at the default seed."""
    groups: dict[str, dict[int, str]] = {}
    for run in runs:
        d = table.get(run, {})
        seed = d.get("seed") if d.get("seed") is not None else default_seed
        groups.setdefault(d.get("replicate_of") or run, {})[seed] = run
    return groups


def seed_level(groups: dict[str, dict[int, str]], categories: dict[str, list[str]],
               items: dict[tuple[str, str], Items | list[Items] | None], alpha: float, confidence: float,
               n_resamples: int, seed: int) -> dict:
    """categories: name -> its tasks (the last may be all tasks). Returns JSON-ready rows (see module doc)."""
    task_eff: dict[tuple[str, str, str], SeedEffect] = {}
    cat_eff: dict[tuple[str, str, str], SeedEffect] = {}
    wil = {}
    tasks = list(dict.fromkeys(t for ts in categories.values() for t in ts))
    for a, b in itertools.combinations(groups, 2):
        seeds = sorted(set(groups[a]) & set(groups[b]))
        raw = {}
        for t in tasks:
            pairs = [(items.get((groups[a][s], t)), items.get((groups[b][s], t))) for s in seeds]
            if not seeds or any(x is None or y is None for x, y in pairs):
                continue
            try:
                boot = np.array([item_bootstrap(x, y, n_resamples, seed) for x, y in pairs])
            except ValueError:
                continue
            d = np.array([score_of(y) - score_of(x) for x, y in pairs])
            raw[t] = (d, boot, [score_of(x) for x, _ in pairs], [score_of(y) for _, y in pairs])
            task_eff[a, b, t] = seed_effect(d, boot, alpha, confidence)
        for g, ts in categories.items():
            common = [t for t in ts if t in raw]
            if not common:
                continue
            d = np.mean([raw[t][0] for t in common], 0)
            boot = np.mean([raw[t][1] for t in common], 0)
            cat_eff[a, b, g] = seed_effect(d, boot, alpha, confidence)
            wil[a, b, g] = wilcoxon_test([np.mean(raw[t][2]) for t in common], [np.mean(raw[t][3]) for t in common],
                                         alpha)
    for family in (task_eff, cat_eff, wil):
        holm_adjust(list(family.values()))
    n_seeds = min((len(set(groups[a]) & set(groups[b])) for a, b in itertools.combinations(groups, 2)), default=0)
    return {
        "designs": list(groups), "runs": groups, "n_seeds": n_seeds,
        "level": "design" if n_seeds > 1 else "models",
        "tasks": [{"a": a, "b": b, "task": t, **r.to_dict()} for (a, b, t), r in task_eff.items()],
        "categories": [{"a": a, "b": b, "category": g, **r.to_dict()} for (a, b, g), r in cat_eff.items()],
        "wilcoxon": [{"a": a, "b": b, "category": g, **r.to_dict()} for (a, b, g), r in wil.items()],
    }
