"""The report's analysis: a pure function from an experiment's results to a JSON-ready dict (scores, category
means, per-dataset paired tests, Wilcoxon tests, win/tie/loss, and the seed-level answer of poolattn.report.seeds).
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from ..evaluation.tasktypes import TASK_TYPES
from ..experiment import ReportSettings
from ..stats.multiple import WilcoxonResult, holm_adjust, wilcoxon_test, win_tie_loss
from ..stats.paired import Items, PairedResult, paired_test, score_of
from .folder import Experiment, default_seed, design_table
from .seeds import design_runs, seed_level

ALL = "All tasks"


def settings_for(exp: Experiment, **overrides) -> ReportSettings:
    """experiment.yaml's `report:` section with non-None overrides applied."""
    raw = dict(exp.config.get("report") or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return ReportSettings.model_validate(raw)


def analyse(exp: Experiment, settings: ReportSettings, items: dict[tuple[str, str], Items | list[Items] | None],
            load_notes: list[str] = (), training: dict | None = None, progress: bool = True) -> dict:
    """All numbers of the report, JSON-ready, from the folder's results (no I/O): scores, category means, the
    design-level answer over seeds (`seed_level`), per-dataset tests of single trained models (every pair of tested
    runs x task, one Holm family), Wilcoxon tests (every pair x category and over all tasks, another family).
    items: (run, task) -> per-item results (poolattn.report.folder.load_run_items)."""
    ref = settings.reference or exp.designs[0]
    table, first = design_table(exp.config), default_seed(exp.config)
    if ref not in exp.columns:  # a replicated design names its first seed's run (e.g. 1-eos-causal-s42)
        ref = next((d for d in exp.columns if table.get(d, {}).get("replicate_of") == ref
                    and table[d].get("seed") == first), ref)
    if ref not in exp.columns:
        raise ValueError(f"unknown reference design {ref!r}; valid: {exp.columns}")
    # With several seeds the single-run tests compare one seed's runs only (replicate against replicate would enter
    # the Holm family as if each were a design); the design-level answer over seeds is seed_level.
    replicated = any(table.get(d, {}).get("replicate_of") for d in exp.designs)
    runs = [d for d in exp.designs if not table.get(d, {}).get("replicate_of") or table[d].get("seed") == first
            or d == ref]
    # Reference rows are tested only when asked: the baseline with baseline_in_tests, any of them as the reference.
    tested = runs + [r for r in exp.references if r == ref or (r == exp.baseline and settings.baseline_in_tests)]
    pairs = list(itertools.combinations(tested, 2))
    tasks = exp.tasks
    cats = [c for c in TASK_TYPES if any(exp.task_type(t) == c for t in tasks)]  # MTEB's order, unknown types after
    cats += sorted({exp.task_type(t) for t in tasks} - set(cats))
    groups = {c: [t for t in tasks if exp.task_type(t) == c] for c in cats} | {ALL: tasks}
    score = lambda d, t: exp.scores[d][t].main_score if t in exp.scores[d] else None

    notes = [f"{'reference row' if d in exp.labels else 'design'} {d!r} has no results yet "
             f"({exp.layout.summary(d).relative_to(exp.folder)})" for d in exp.missing] + list(load_notes)
    for (d, t), it in items.items():
        if it is not None and score(d, t) is not None and abs(score_of(it) - score(d, t)) > 0.005:
            metric = it.metric if isinstance(it, Items) else it[0].metric
            notes.append(f"{d} / {t}: per-item {metric} {100 * score_of(it):.2f} differs from the main score "
                         f"{100 * score(d, t):.2f}; the paired test compares the per-item metric")

    tests: dict[tuple[str, str, str], PairedResult] = {}
    jobs = [(a, b, t) for a, b in pairs for t in tasks]
    from rich.progress import track

    for a, b, t in track(jobs, description="paired tests", disable=not progress or not jobs):
        if items.get((a, t)) is not None and items.get((b, t)) is not None:
            try:
                tests[a, b, t] = paired_test(items[a, t], items[b, t], settings.n_resamples, settings.confidence,
                                             settings.seed)
            except ValueError as err:
                notes.append(f"{a} vs {b} on {t}: no paired test ({err})")
    untested = sorted({t for a, b, t in jobs} - {t for _, _, t in tests})
    if untested:
        notes.append(f"no per-dataset tests for {', '.join(untested)}: a design lacks the task or its per-item "
                     "scores")
    holm_adjust(list(tests.values()))

    wilcoxon: dict[tuple[str, str, str], WilcoxonResult] = {}
    for a, b in pairs:
        for g, ts in groups.items():
            common = [t for t in ts if score(a, t) is not None and score(b, t) is not None]
            wilcoxon[a, b, g] = wilcoxon_test([score(a, t) for t in common], [score(b, t) for t in common],
                                              settings.alpha)
    holm_adjust(list(wilcoxon.values()))

    wtl = win_tie_loss(tests, tested, settings.alpha)
    means = {}
    for g, ts in groups.items():
        common = [t for t in ts if all(score(d, t) is not None for d in exp.columns)]
        if len(common) < len(ts):
            notes.append(f"{g} averages use the {len(common)} of {len(ts)} tasks every column has")
        means[g] = {"tasks": common, "mean": {d: float(np.mean([score(d, t) for t in common])) if common else None
                                               for d in exp.columns}}
    return {
        "experiment": exp.config.get("name", exp.folder.name), "folder": str(exp.folder),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": settings.model_dump() | {"reference": ref},
        "designs": exp.designs, "baseline": exp.baseline, "reference": ref, "tested": tested, "missing": exp.missing,
        "references": exp.references, "labels": {r: exp.labels[r] for r in exp.references},
        "per_run_seed": first if replicated else None,
        "tasks": {t: {"type": exp.task_type(t), "scores": {d: score(d, t) for d in exp.columns},
                      "seconds": {d: exp.scores[d][t].seconds for d in exp.columns if t in exp.scores[d]}}
                  for t in tasks},
        "categories": means,
        "paired_tests": [{"a": a, "b": b, "task": t, **r.to_dict()} for (a, b, t), r in tests.items()],
        "wilcoxon": [{"a": a, "b": b, "category": g, **r.to_dict()} for (a, b, g), r in wilcoxon.items()],
        "win_tie_loss": wtl, "notes": notes, "config": exp.config, "environment": exp.environment,
        "training": training or {}, "budget": exp.budget,
        "replicates": replicates(exp.config, exp.designs, means),
        "widths": widths(exp, table, groups),
        "seed_level": seed_level(design_runs(table, exp.designs, first),
                                 groups, items, settings.alpha, settings.confidence, settings.n_resamples,
                                 settings.seed),
    }


def replicates(config: dict, designs: list[str], means: dict) -> dict[str, dict]:
    """Designs replicated over seeds: per configured design, its runs and the mean/sd of each category average."""
    groups: dict[str, list[str]] = {}
    for name, d in design_table(config).items():
        if d.get("replicate_of") and name in designs:
            groups.setdefault(d["replicate_of"], []).append(name)
    out = {}
    for base, runs in groups.items():
        vals = {g: [info["mean"][r] for r in runs if info["mean"].get(r) is not None] for g, info in means.items()}
        out[base] = {"runs": runs,
                     "mean": {g: float(np.mean(v)) if v else None for g, v in vals.items()},
                     "sd": {g: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for g, v in vals.items()}}
    return out


def oriented(rows: list[dict], key: str, a: str, b: str, k: str, cls):
    """The result of b - a (flipping a stored a-b test) as a stats result object, or None."""
    for r in rows:
        if r[key] == k and {r["a"], r["b"]} == {a, b}:
            res = cls(**{f: v for f, v in r.items() if f not in ("a", "b", key)})
            return res if r["b"] == b else res.flip()
    return None


def widths(exp: Experiment, table: dict[str, dict], groups: dict[str, list[str]]) -> dict:
    """Scores at eval.dimensions' widths beside the full width: per configured design (its seeds pooled) or
    reference row and width, the mean and SD over runs of each category average, and whether the design was
    trained at that width (train.matryoshka_dims). Empty without eval.dimensions."""
    if not exp.width_scores:
        return {}
    cfg_train = exp.config.get("train") or {}
    by_design: dict[str, list[str]] = {}
    for run in exp.columns:
        by_design.setdefault(table.get(run, {}).get("replicate_of") or run, []).append(run)
    rows = []
    for design, runs in by_design.items():
        trained = ({**cfg_train, **(table.get(runs[0], {}).get("train") or {})}.get("matryoshka_dims") or [])
        for n in list(exp.width_scores) + [None]:
            scores = exp.scores if n is None else exp.width_scores[n]
            mean, sd = {}, {}
            for g, ts in groups.items():
                vals = [float(np.mean([scores[r][t].main_score for t in ts])) for r in runs
                        if r in scores and all(t in scores[r] for t in ts)]
                mean[g] = float(np.mean(vals)) if vals else None
                sd[g] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            rows.append({"design": design, "dimensions": n, "trained": n is None or n in trained,
                         "runs": sum(r in scores for r in runs), "mean": mean, "sd": sd})
    return {"dimensions": list(exp.width_scores), "rows": rows}
