"""poolattn.evaluation.tasktypes: the one table of task types that selection, per-item scores and the report read."""
from __future__ import annotations

import json
import typing

import numpy as np
import pytest

from poolattn.evaluation import TaskSpec, resolve_tasks
from poolattn.evaluation.items import FORMATS, load_items, needs_predictions
from poolattn.evaluation.tasktypes import CATEGORY_TYPES, TASK_TYPES, task_type
from poolattn.report.folder import Experiment, TaskScore


def test_every_row_is_an_mteb_type_with_a_per_item_format():
    from mteb.abstasks.task_metadata import TaskType

    assert set(TASK_TYPES) <= set(typing.get_args(TaskType))
    assert list(TASK_TYPES) == sorted(TASK_TYPES)  # MTEB's order, the report's
    for t in TASK_TYPES.values():
        assert t.unit in FORMATS and t.category == t.name.lower()
        assert CATEGORY_TYPES[t.category] == t.name
    assert [t for t in TASK_TYPES if TASK_TYPES[t].queries] == ["Reranking", "Retrieval"]
    assert [t for t in TASK_TYPES if needs_predictions(t)] == ["Classification", "PairClassification", "STS"]


def test_an_unknown_type_is_refused_with_the_table():
    with pytest.raises(ValueError, match="BitextMining.*supported: Classification, Clustering, PairClassification"):
        task_type("BitextMining")


@pytest.mark.parametrize("kind, metric", [("STS", "spearman"), ("PairClassification", "ap")])
def test_a_pair_part_is_read_with_its_types_item_metric(tmp_path, kind, metric):
    path = tmp_path / "t.items.json"
    path.write_text(json.dumps({"type": kind, "main_metric": "x", "parts": [
        {"split": "test", "subset": "default", "unit": "pair", "similarity": [0.1, 0.9, 0.5], "gold": [0, 1, 1]}]}))
    items = load_items(path)
    assert items.metric == metric and np.allclose(items.pred, [0.1, 0.9, 0.5])


def test_categories_select_pack_tasks_and_order_the_report(tmp_path):
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": {"A": {"type": "STS"}, "B": {"type": "Retrieval"},
                                                               "C": {"type": "Clustering"}}}))
    assert resolve_tasks("retrieval,sts", tmp_path) == ["B", "A"]
    assert TaskSpec("B", "B", "Retrieval", tmp_path, {}).category == "retrieval"
    scores = {"d": {t: TaskScore(task=t, type=k, main_score=0.5) for t, k in
                    (("A", "STS"), ("B", "Retrieval"), ("C", "Clustering"), ("Z", "NewType"))}}
    exp = Experiment(tmp_path, {}, "", None, ["d"], None, scores)
    assert exp.tasks == ["C", "B", "A", "Z"]  # the table's order, an unknown type after it
