"""poolattn.evaluation.summary: summary.json's one writer and reader."""
from __future__ import annotations

import json

import pytest

from poolattn.evaluation.summary import TaskScore, read_summary, write_summary

HEADER = {"model": "tiny", "revision": "abc", "mteb_version": "2.0", "data_dir": "/data", "splits": "main",
          "seconds": 3725.0}


def _score(task: str, kind: str, score: float) -> TaskScore:
    return TaskScore(task=task, mteb_task=task, type=kind, category=kind.lower(), source="pack",
                     main_metric="cosine_spearman", main_score=score, seconds=1.25, cpu_seconds=2.5, encoded=40,
                     instruction=None, result_file=f"/o/{task}.json", items_file=f"/o/{task}.items.json",
                     main_split="test", splits=["test"])


def test_write_then_read_round_trips_in_the_format_on_disk(tmp_path):
    scores = {"STSBenchmark": _score("STSBenchmark", "STS", 0.8123456), "SciFactNano": _score("SciFactNano",
                                                                                               "Retrieval", 0.5)}
    write_summary(scores, tmp_path, HEADER)
    assert read_summary(tmp_path / "summary.json") == scores
    written = json.loads((tmp_path / "summary.json").read_text())
    # the key order every poolattn 0.1.0 summary.json has (old experiment folders and new ones read alike)
    assert list(written) == [*HEADER, "tasks"]
    assert list(written["tasks"][0]) == [
        "task", "mteb_task", "type", "category", "source", "main_metric", "main_score", "seconds", "cpu_seconds",
        "encoded", "instruction", "result_file", "items_file", "main_split", "splits", "truncated", "main_score_x100"]
    assert written["tasks"][0]["main_score_x100"] == 81.23
    md = (tmp_path / "summary.md").read_text()
    assert "total 1:02:05" in md and "| STSBenchmark | STS | cosine_spearman | 81.23 | test | 1.2 | 2.5 | pack |" in md


def test_rows_of_earlier_builds_and_minimal_rows_read(tmp_path):
    full = _score("STS12", "STS", 0.7).model_dump()
    older = {k: v for k, v in full.items() if k not in ("main_split", "splits")}  # before 2026-12-05 / 2026-12-01
    minimal = {"task": "PairA", "type": "PairClassification", "main_metric": "max_ap", "main_score": 0.6,
               "seconds": 1.0}
    unscored = {"task": "Later", "type": "STS", "main_score": None}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"model": "m", "tasks": [older, minimal, unscored]}))
    got = read_summary(path)
    assert list(got) == ["STS12", "PairA"]
    assert got["STS12"].main_split is None and got["STS12"].encoded == 40
    assert got["PairA"].type == "PairClassification" and got["PairA"].category is None


@pytest.mark.parametrize("content, says", [
    ({"tasks": {"STS12": {"type": "STS", "main_score": 0.5}}}, "not a list"),  # keyed by task: no poolattn wrote it
    ({"tasks": [{"task": "STS12", "main_score": 0.5}]}, "type"),
    ({"tasks": [{"task": "STS12", "type": "STS", "main_score": "high"}]}, "main_score"),
    ({"model": "m"}, "KeyError"),
])
def test_a_file_that_is_not_a_summary_is_named(tmp_path, content, says):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="summary.json") as err:
        read_summary(path)
    assert says in str(err.value)


def test_a_progress_row_of_another_version_is_not_taken_for_a_finished_task():
    row = _score("STS12", "STS", 0.7).model_dump()
    with pytest.raises(ValueError):  # the runner catches it and scores the task again
        TaskScore.model_validate({**row, "a_field_from_elsewhere": 1})
