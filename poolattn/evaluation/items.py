"""Per-item results, one format per unit of a task type (poolattn.evaluation.tasktypes): each format both writes
a part of `<task>.items.json` (the evaluation harness calls `write_part`) and reads it back as stats.Items (the report
calls `load_items`), so the two cannot drift apart.

A file is {"task", "type", "main_metric", "parts": [{"split", "subset", "unit", ...}]}, one part per mteb
subset/split; by unit:
  pair     (STS, PairClassification)  "similarity" (cosine per pair), "gold"  -> the type's item metric (Spearman / AP)
  example  (Classification)           "gold", "predictions" (one list per mteb experiment), "correct_rate"
  run      (Clustering)               "v_measure": {level: [one per k-means run]}
  query    (Retrieval, Reranking)     "query_ids" + per-query "<metric>" for each of QUERY_METRICS
A flat {"metric", "gold"/"pred" | "scores", "ids"} file (stats.Items fields) is read as one part.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..stats.paired import Items
from .tasktypes import task_type

# per-query metrics kept for retrieval/reranking: our name -> pytrec_eval's
QUERY_METRICS = {"ndcg_at_10": "ndcg_cut_10", "map_at_10": "map_cut_10", "recall_at_10": "recall_10",
                 "map_at_1000": "map_cut_1000"}


def items_path(folder: str | Path, task: str) -> Path:
    """A task's per-item file in an evaluation's output folder."""
    return Path(folder) / f"{task}.items.json"


def _rows(task: Any, subset: str, split: str) -> Any:
    data = task.dataset
    return data[subset][split] if subset in data else data[split]


class Source(NamedTuple):
    """What the harness has for one (subset, split) of a task after mteb scored it."""
    task: Any  # the mteb task (its dataset and label column)
    subset: str
    split: str
    scores: dict  # mteb's scores of this subset/split
    predictions: Any  # mteb's saved predictions of this subset/split (None for retrieval)
    query_scores: dict | None  # pytrec_eval's per-query scores of this subset/split (retrieval, reranking)


class ItemFormat(NamedTuple):
    write: Callable[[Source], dict]
    read: Callable[[dict, str, str | None], Items]  # (part, the type's item metric, the task's main metric)


def _write_pairs(src: Source) -> dict:
    label = "score" if src.task.metadata.type == "STS" else src.task.label_column_name
    return {"unit": "pair", "similarity": src.predictions["cosine_scores"],
            "gold": list(_rows(src.task, src.subset, src.split)[label])}


def _read_pairs(part: dict, metric: str, _main: str | None) -> Items:
    return Items(metric, gold=np.asarray(part["gold"], float), pred=np.asarray(part["similarity"], float))


def _write_classification(src: Source) -> dict:
    gold, pred = list(_rows(src.task, src.subset, src.split)[src.task.label_column_name]), src.predictions
    return {"unit": "example", "gold": gold, "predictions": pred,
            "note": (f"predictions of all {len(pred)} experiments (logistic regression trained on a seeded "
                     f"subsample of {src.task.samples_per_label} examples per label each)"),
            "accuracy_per_experiment": [e["accuracy"] for e in src.scores["scores_per_experiment"]],
            "correct_rate": [sum(p[i] == g for p in pred) / len(pred) for i, g in enumerate(gold)]}


def _read_classification(part: dict, metric: str, _main: str | None) -> Items:
    rate = part.get("correct_rate")
    if rate is None:  # per-example share of mteb's experiments that got it right
        gold = np.asarray(part["gold"])
        rate = np.mean([np.asarray(p) == gold for p in part["predictions"]], axis=0)
    return Items(metric, scores=np.asarray(rate, float))


def _read_clustering(part: dict, metric: str, _main: str | None) -> Items:
    runs = part["v_measure"]
    runs = [v for k in sorted(runs) for v in runs[k]] if isinstance(runs, dict) else runs
    return Items(metric, scores=np.asarray(runs, float))


def query_part(per_query: dict) -> dict:
    """A retrieval/reranking part from pytrec_eval's {query id: {metric: value}}."""
    qids = sorted(per_query)
    part: dict[str, Any] = {"unit": "query", "query_ids": qids}
    for ours, theirs in QUERY_METRICS.items():
        if qids and theirs in per_query[qids[0]]:
            part[ours] = [per_query[q][theirs] for q in qids]
    return part


def _read_queries(part: dict, metric: str, main_metric: str | None) -> Items:
    metric = main_metric if main_metric in part else metric
    return Items(metric, ids=list(part["query_ids"]), scores=np.asarray(part[metric], float))


# unit (TaskType.unit) -> its format
FORMATS: dict[str, ItemFormat] = {
    "pair": ItemFormat(_write_pairs, _read_pairs),
    "example": ItemFormat(_write_classification, _read_classification),
    "run": ItemFormat(lambda src: {"unit": "run", "v_measure": src.scores["v_measures"]}, _read_clustering),
    "query": ItemFormat(lambda src: query_part(src.query_scores), _read_queries),
}


def needs_predictions(kind: str) -> bool:
    """Whether the parts of this task type are written from mteb's saved predictions (Source.predictions: the
    harness asks mteb for its prediction folder)."""
    return task_type(kind).unit in ("pair", "example")


def write_part(kind: str, src: Source) -> dict:
    """One part of a per-item file, as the report reads it back."""
    return {"split": src.split, "subset": src.subset, **FORMATS[task_type(kind).unit].write(src)}


def read_part(kind: str, main_metric: str | None, part: dict) -> Items:
    row = task_type(kind)
    return FORMATS[row.unit].read(part, row.item_metric, main_metric)


def load_items(path: str | Path) -> Items | list[Items]:
    """Parse one `<task>.items.json`; several parts come back as a list (the dataset's score is their mean)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if "parts" not in d:
            return Items(metric=d["metric"], ids=d.get("ids"),
                         **{f: np.asarray(d[f]) for f in ("gold", "pred", "scores") if d.get(f) is not None})
        parts = [read_part(d["type"], d.get("main_metric"), part)
                 for part in sorted(d["parts"], key=lambda p: (str(p.get("split")), str(p.get("subset"))))]
        return parts[0] if len(parts) == 1 else parts
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not a per-item score file ({type(err).__name__}: {err})") from err
