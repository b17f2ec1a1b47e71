"""MTEB evaluation: mteb's task definitions, evaluators and metrics on the offline data pack (or the hub), with
per-item scores for significance tests, an embedding cache and task instructions.

    from poolattn.evaluation import evaluate
    scores = evaluate("all-MiniLM-L6-v2", "lite", data_dir="../shared/data", output_dir="runs/minilm")
"""
from __future__ import annotations

from .encoders import EncodeRunner, PoolattnEncoder, mteb_encoder
from .instructions import INSTRUCTIONS, instruction_for, load_overrides
from .loading import fingerprint, load_model
from .pack import load_task
from .runner import embedding_cache_dir, evaluate
from .selection import LITE, SUITES, TaskSpec, TaskUnavailable, default_data_dir, pack_tasks, resolve_tasks, task_spec
from .summary import TaskScore, read_summary
from .tasktypes import CATEGORY_TYPES, TASK_TYPES, TaskType


class _TaskCategory(dict):
    """task name -> category (sts, retrieval, ...): the pack's tasks listed, any other MTEB task looked up."""

    def __missing__(self, name: str) -> str:
        return task_spec(name).category


TASK_CATEGORY: dict[str, str] = _TaskCategory()


def _fill_task_category() -> None:
    try:
        TASK_CATEGORY.update({n: TASK_TYPES[e["type"]].category for n, e in pack_tasks().items()
                              if e.get("type") in TASK_TYPES})  # any other: task_spec names the problem
    except Exception:  # no pack here: lookups still work one by one
        pass


_fill_task_category()

__all__ = ["evaluate", "resolve_tasks", "load_model", "TaskScore", "read_summary", "TASK_CATEGORY", "TASK_TYPES",
           "CATEGORY_TYPES", "TaskType", "LITE", "SUITES",
           "INSTRUCTIONS", "instruction_for", "load_overrides", "TaskUnavailable", "TaskSpec", "task_spec", "load_task",
           "pack_tasks", "default_data_dir", "embedding_cache_dir", "PoolattnEncoder", "EncodeRunner", "mteb_encoder",
           "fingerprint"]
