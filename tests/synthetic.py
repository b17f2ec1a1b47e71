"""A synthetic experiment folder with known effects, in the layout poolattn.report reads (no model, no data pack);
per-item files in the evaluation harness's format.

Each design has a `skill`: higher skill -> less noise in STS/pair-classification predictions, higher per-query nDCG,
more correct labels, higher V-measure. Designs with the same (skill, noise) are item-for-item identical.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from poolattn.evaluation.items import load_items
from poolattn.stats.paired import score_of

# task -> (type, number of items)
TASKS = {
    **{f"STS{i}": ("STS", 200) for i in range(1, 8)},  # 7 STS datasets: enough for Wilcoxon to reach p < 0.05
    "RetrievalA": ("Retrieval", 60), "RetrievalB": ("Retrieval", 60),
    "ClassA": ("Classification", 300), "ClassB": ("Classification", 300),
    "ClusterA": ("Clustering", 10),
    "PairA": ("PairClassification", 300),
    "RerankA": ("Reranking", 50),
}
DESIGNS = {"1-eos-causal": (0.0, 1), "4-latent-bidirectional": (1.5, 2), "1-eos-causal-copy": (0.0, 1)}
BASELINE = ("baseline", -1.0, 9)


def _part(kind: str, n: int, skill: float, task_rng: np.random.Generator, rng: np.random.Generator) -> dict:
    """One part of a per-item file, as the evaluation harness writes it; task_rng draws what every design shares
    (gold, query difficulty), rng the design's noise."""
    part = {"split": "test", "subset": "default"}
    if kind == "STS":
        gold = np.round(task_rng.uniform(0, 5, n) * 5) / 5
        return part | {"unit": "pair", "gold": gold.tolist(),
                       "similarity": (gold / 5 + rng.normal(0, 0.5 * 2.0 ** -skill, n)).round(6).tolist()}
    if kind == "PairClassification":
        gold = (task_rng.random(n) < 0.4).astype(int)
        return part | {"unit": "pair", "gold": gold.tolist(),
                       "similarity": (0.3 * gold + rng.normal(0, 0.3 * 2.0 ** -skill, n)).round(6).tolist()}
    if kind in ("Retrieval", "Reranking"):
        base = task_rng.beta(2, 3, n)
        scores = np.clip(base + 0.08 * skill + rng.normal(0, 0.08, n), 0, 1).round(6)
        return part | {"unit": "query", "query_ids": [f"q{i}" for i in range(n)], "ndcg_at_10": scores.tolist(),
                       "map_at_1000": (0.9 * scores).round(6).tolist()}
    if kind == "Classification":
        gold = task_rng.integers(0, 4, n)
        p_right = float(np.clip(0.55 + 0.12 * skill, 0.05, 0.95))
        preds = [np.where(rng.random(n) < p_right, gold, (gold + rng.integers(1, 4, n)) % 4) for _ in range(3)]
        return part | {"unit": "example", "gold": gold.tolist(), "predictions": [p.tolist() for p in preds],
                       "correct_rate": np.mean([p == gold for p in preds], axis=0).round(6).tolist()}
    if kind == "Clustering":
        base = task_rng.uniform(0.3, 0.4, n)
        return part | {"unit": "run",
                       "v_measure": {"Level 0": (base + 0.05 * skill + rng.normal(0, 0.01, n)).round(6).tolist()}}
    raise ValueError(kind)


MAIN_METRIC = {"STS": "cosine_spearman", "PairClassification": "max_ap", "Retrieval": "ndcg_at_10",
               "Reranking": "map_at_1000", "Classification": "accuracy", "Clustering": "v_measure"}


def write_synthetic_experiment(folder: str | Path, designs: dict[str, tuple[float, int]] | None = None,
                               tasks: dict[str, tuple[str, int]] | None = None,
                               baseline: tuple[str, float, int] | None = BASELINE, seed: int = 0,
                               report: dict | None = None, items: bool = True) -> Path:
    """Write EXPERIMENT/{experiment.yaml, environment.json, runs/<design>/eval/...}. designs: name -> (skill, noise
    seed); baseline: (name, skill, noise seed) or None; report: the config's `report:` section."""
    folder = Path(folder)
    designs = DESIGNS if designs is None else designs
    tasks = TASKS if tasks is None else tasks
    rows = dict(designs) | ({baseline[0]: baseline[1:]} if baseline else {})
    for name, (skill, noise) in rows.items():
        ev = folder / "runs" / name / "eval"
        ev.mkdir(parents=True, exist_ok=True)
        summary = []
        for k, (task, (kind, n)) in enumerate(tasks.items()):
            part = _part(kind, n, skill, np.random.default_rng([seed, k]), np.random.default_rng([seed, k, noise]))
            path = ev / f"{task}.items.json"
            path.write_text(json.dumps({"task": task, "type": kind, "main_metric": MAIN_METRIC[kind],
                                        "parts": [part]}))
            summary.append({"task": task, "type": kind, "main_metric": MAIN_METRIC[kind],
                            "main_score": score_of(load_items(path)), "seconds": 1.0 + n / 100})
            if not items:
                path.unlink()
        (ev / "summary.json").write_text(json.dumps({"model": name, "tasks": summary}, indent=1))
    config = {"name": "synthetic", "output_dir": str(folder),
              "designs": [{"name": d, "pooling": d.split("-")[1], "attention": d.split("-")[2]} for d in designs],
              "baseline": {"name": baseline[0], "pooling": "mean", "attention": "causal"} if baseline else None,
              "eval": {"tasks": list(tasks)}, "seed": seed, "report": report or {"n_resamples": 200}}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "environment.json").write_text(json.dumps(
        {"python": "3.11.0", "cpu": "synthetic CPU", "cpu_cores": 2, "gpus": [],
         "packages": {"torch": "2.0", "mteb": "2.0"}}))
    return folder
