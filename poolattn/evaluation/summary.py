"""summary.json (and its Markdown twin summary.md): one evaluation's main score per task. Its one writer (the
evaluation runner calls `write_summary`) and its one reader (`read_summary`: the report, the study, benchmarks) live
here with the one row class, so the two cannot drift apart (per-item scores: poolattn.evaluation.items).

    {"model", "revision", "mteb_version", "data_dir", "splits", "seconds", ["dimensions", "trained_width",]
     "tasks": [{"task", "mteb_task", "type", "category", "source", "main_metric", "main_score", "seconds", ...,
                "main_score_x100"}, ...]}   one row per task, in task order (TaskScore's fields)

Rows written by earlier poolattn 0.1.0 builds lack fields added since (`main_split` before 2026-12-01, `splits`
before 2026-12-05): they read as None. A row needs only `task`, `type` and `main_score` to be read (summaries made by
hand or by other tools, such as the report tests' synthetic folders).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from ..fileio import write_text

SUMMARY_FILE = "summary.json"  # in an evaluation's output folder


class TaskScore(BaseModel):
    """One task's result: a row of summary.json and of progress.json (the evaluation runner's record of finished
    tasks). Fields other than task, type and main_score are None only in rows that poolattn did not write.

    Args:
        task: our name (the pack's, e.g. SciFactNano).
        mteb_task: the mteb task that scored it.
        type: mteb task type (poolattn.evaluation.tasktypes).
        category: the category name that --tasks accepts (sts, retrieval, ...).
        source: "pack" or "hub".
        main_metric: mteb's main metric of the task.
        main_score: as mteb reports it (0-1), on main_split (the leaderboard's split; others in result_file).
        seconds: wall time, encoding included.
        cpu_seconds: CPU time of this process (all threads): wall time / threads when the CPU is not shared.
        encoded: texts run through the model (the rest came from the embedding cache).
        truncated: of those encoded, the texts cut at the model's max_length (None: not counted, e.g. a
            sentence-transformers model).
        instruction: the query instruction the task was encoded with.
        result_file: mteb's result JSON of the task.
        items_file: the per-item scores (poolattn.evaluation.items).
        main_split: the split main_score is read from.
        splits: the splits scored: the main split, or every one with all_splits.
    """
    # extra="forbid": a progress.json row of another version is not taken for a finished task (the runner rescores)
    model_config = ConfigDict(extra="forbid")
    # Declaration order is summary.json's key order: keep it.
    task: str
    mteb_task: str | None = None
    type: str
    category: str | None = None
    source: str | None = None
    main_metric: str | None = None
    main_score: float
    seconds: float | None = None
    cpu_seconds: float | None = None
    encoded: int | None = None
    instruction: str | None = None
    result_file: str | None = None
    items_file: str | None = None
    main_split: str | None = None
    splits: list[str] | None = None
    truncated: int | None = None  # last: older summary.json files keep their key order as a prefix

    @property
    def main_score_x100(self) -> float:
        return round(100 * self.main_score, 2)


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour up."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def write_summary(scores: Mapping[str, TaskScore], output_dir: Path, header: dict[str, Any]) -> None:
    """Write summary.json and summary.md into `output_dir`.

    Args:
        scores: task name -> its score, in task order.
        output_dir: the evaluation's folder.
        header: model, revision, mteb_version, data_dir, splits ("main" | "all"), seconds (the whole run's);
            with a width, dimensions and trained_width (True, False, or None: not recorded).
    """
    rows = [{**s.model_dump(), "main_score_x100": s.main_score_x100} for s in scores.values()]
    write_text(output_dir / SUMMARY_FILE, json.dumps({**header, "tasks": rows}, indent=2))
    lines = [f"# {header['model']}", "",
             f"revision `{header['revision']}`, mteb {header['mteb_version']}, data {header['data_dir']}, "
             f"{header.get('splits', 'all')} split(s), total {clock(header['seconds'])}"
             + (f", vectors cut to {header['dimensions']} dimensions" if header.get("dimensions") else ""), "",
             "| task | type | metric | score x100 | splits scored | seconds | CPU seconds | source |",
             "|---|---|---|---:|---|---:|---:|---|"]
    lines += [f"| {s.task} | {s.type} | {s.main_metric} | {s.main_score_x100:.2f} | {', '.join(s.splits or [])} | "
              f"{s.seconds:.1f} | {s.cpu_seconds:.1f} | {s.source} |" for s in scores.values()]
    by_cat: dict[str, list[float]] = {}
    for s in scores.values():
        by_cat.setdefault(s.category, []).append(s.main_score_x100)
    lines += ["", "| category | tasks | mean x100 |", "|---|---:|---:|"]
    lines += [f"| {c} | {len(v)} | {sum(v) / len(v):.2f} |" for c, v in by_cat.items()]
    write_text(output_dir / "summary.md", "\n".join(lines) + "\n")


def read_summary(path: str | Path) -> dict[str, TaskScore]:
    """summary.json's rows by task name (rows without a main score are left out); ValueError naming the file when
    it is not one.

    Args:
        path: the summary.json file.
    """
    path = Path(path)
    try:
        rows = json.loads(path.read_text())["tasks"]
        if not isinstance(rows, list):
            raise TypeError(f"'tasks' is a {type(rows).__name__}, not a list of rows")
        known = TaskScore.model_fields
        return {row["task"]: TaskScore.model_validate({k: v for k, v in row.items() if k in known})
                for row in rows if row.get("main_score") is not None}
    except ValidationError as err:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{path}: a task row does not read as a score ({wrong})") from err
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: expected {{'tasks': [{{'task', 'type', 'main_score', ...}}, ...]}} "
                         f"({type(err).__name__}: {err})") from err
