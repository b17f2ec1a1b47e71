"""The mteb task types poolattn scores: one row each, the one table that task selection (pack.py), per-item scores
(items.py), the evaluation runner and the report read. A task of another type is refused with this list.

Order: MTEB's (alphabetical), the order in which the report shows categories.
"""
from __future__ import annotations

from typing import NamedTuple


class TaskType(NamedTuple):
    """One mteb task type.

    Args:
        name: mteb's name of the type (task.metadata.type), e.g. "PairClassification".
        category: the category name that `--tasks` accepts for every pack task of this type, and the `category` of a
            summary.json row (e.g. "pairclassification").
        unit: what one per-item score is of (the `unit` of a part of `<task>.items.json`): "pair", "example" (a
            classified text), "run" (a k-means run) or "query"; poolattn.evaluation.items has one format per unit.
        item_metric: the per-item metric the paired tests compare (for queries: the one used when the task's main
            metric has no per-query scores).
    """
    name: str
    category: str
    unit: str
    item_metric: str

    @property
    def queries(self) -> bool:
        """Queries against a corpus (retrieval, reranking): scored per query, the instruction on the query side."""
        return self.unit == "query"


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("Classification", "classification", "example", "mean_accuracy"),
    TaskType("Clustering", "clustering", "run", "v_measure"),
    TaskType("PairClassification", "pairclassification", "pair", "ap"),
    TaskType("Reranking", "reranking", "query", "ndcg_at_10"),
    TaskType("Retrieval", "retrieval", "query", "ndcg_at_10"),
    TaskType("STS", "sts", "pair", "spearman"),
)}
# category name (what --tasks accepts) -> mteb task type
CATEGORY_TYPES: dict[str, str] = {t.category: t.name for t in TASK_TYPES.values()}


def task_type(name: str) -> TaskType:
    """The row of mteb task type `name`; ValueError listing the supported ones.

    Args:
        name: an mteb task type (task.metadata.type).
    """
    if name not in TASK_TYPES:
        raise ValueError(f"task type {name!r} is not scored by poolattn; supported: {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]
