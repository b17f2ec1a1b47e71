"""Which tasks to run: the `lite` and `full` suites, categories, the data pack's index (tasks.json) and task names
resolved to a TaskSpec (a pack task and the mteb task that scores it, or a hub task). Loading a task's rows: pack.py.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..datadir import default_data_dir
from .tasktypes import CATEGORY_TYPES, TASK_TYPES

# One or more tasks of every category the paper discusses, cheap to encode (measured: docs/results.md#evaluation;
# EmotionClassification is the largest part: mteb fits 10 logistic regressions). Several lite runs make up the
# default experiment. Left to `full`: SciFactNano/NFCorpusNano (2,000 abstracts of up to 512 tokens
# each), SICK-R (19,854 sentences), TwitterURLCorpus, Banking77 and the full retrieval sets.
LITE: tuple[str, ...] = (
    "STSBenchmark", "STS13", "BIOSSES",
    "EmotionClassification",
    "TwentyNewsgroupsClustering",
    "ARCChallengeNano", "SIQANano",
)
SUITES = ("lite", "full")
# Hub tasks are scored as on this leaderboard: its subsets (e.g. STS17 en-en, AmazonCounterfactual en, not en-ext) and
# its split for the main score (test; MSMARCO dev). Only that split is evaluated unless all splits are asked for.
LEADERBOARD = "MTEB(eng, v1)"
DEFAULT_LANGUAGES = ("eng",)


class TaskUnavailable(RuntimeError):
    """A task that is neither in the data pack nor loadable from the hub."""


@lru_cache(maxsize=8)
def _read_pack(data_dir: str) -> dict[str, dict[str, Any]]:
    path = Path(data_dir) / "tasks.json"
    if not path.exists():
        return {}
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a data-pack index ({e})") from e
    return tasks


def pack_tasks(data_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """tasks.json's entries ({} when the folder has none)."""
    return _read_pack(str(Path(data_dir or default_data_dir()).resolve()))


@lru_cache(maxsize=256)
def _mteb_has(name: str) -> bool:
    import mteb

    try:
        mteb.get_task(name)
    except KeyError:
        return False
    return True


def mteb_name(name: str, entry: dict[str, Any]) -> str:
    """The mteb task that scores a pack task: `mteb_task`, the flat `.v2` form of a clustering task, or the name."""
    if entry.get("mteb_task"):
        return entry["mteb_task"]
    if entry.get("type") == "Clustering" and _mteb_has(f"{name}.v2"):
        return f"{name}.v2"
    return name


@dataclass(frozen=True)
class TaskSpec:
    """A task to run: our name (a pack name, e.g. SciFactNano), the mteb task that scores it, where its data is."""
    name: str
    mteb_task: str
    type: str
    data_dir: Path  # the data pack consulted
    entry: dict[str, Any] | None = None  # its tasks.json entry; None: mteb loads the data from the hub

    @property
    def source(self) -> str:
        return "pack" if self.entry is not None else "hub"

    @property
    def category(self) -> str:
        return TASK_TYPES[self.type].category


def _unknown(name: str, data_dir: Path, pack: dict[str, Any], hint: str) -> ValueError:
    listed = ", ".join(pack) if pack else f"(no tasks.json in {data_dir})"
    return ValueError(f"unknown task {name!r} ({hint}). Tasks in the data pack {data_dir}: {listed}. Suites: "
                      f"{', '.join(SUITES)}. Categories: {', '.join(CATEGORY_TYPES)}. Any other MTEB task name is loaded "
                      f"from the Hugging Face hub.")


def task_spec(name: str, data_dir: str | Path | None = None) -> TaskSpec:
    """One task by name: a pack task, the mteb name of one (e.g. TwentyNewsgroupsClustering.v2), or a hub task."""
    import mteb

    data_dir = Path(data_dir or default_data_dir())
    pack = pack_tasks(data_dir)
    if name not in pack:  # an mteb name that the pack holds under its own name
        alias = [n for n, e in pack.items() if mteb_name(n, e) == name and not n.endswith("Nano")]
        name = alias[0] if alias else name
    if name in pack:
        entry = pack[name]
        if entry.get("type") not in TASK_TYPES:
            raise ValueError(f"{data_dir / 'tasks.json'}: task {name!r} has type {entry.get('type')!r}; "
                             f"supported: {', '.join(TASK_TYPES)}")
        target = mteb_name(name, entry)
        try:
            mteb.get_task(target)
        except KeyError as e:
            raise ValueError(f"{data_dir / 'tasks.json'}: task {name!r} is scored by mteb task {target!r}, which "
                             f"mteb {mteb.__version__} does not define") from e
        return TaskSpec(name, target, entry["type"], data_dir, entry)
    try:
        task = mteb.get_task(name)
    except KeyError as e:
        raise _unknown(name, data_dir, pack, str(e).strip("'\"").removeprefix("KeyError: ")) from None
    if task.metadata.type not in TASK_TYPES:
        raise ValueError(f"task {name!r} is of type {task.metadata.type}; supported: {', '.join(TASK_TYPES)}")
    return TaskSpec(name, name, task.metadata.type, data_dir, None)


def resolve_tasks(spec: str | Iterable[str], data_dir: str | Path | None = None) -> list[str]:
    """Task names from names, suites (lite, full) and categories (sts, retrieval, ...), comma-separated or a list.

    Unknown names raise ValueError listing the pack's tasks; order is kept, duplicates dropped.
    """
    data_dir = Path(data_dir or default_data_dir())
    pack = pack_tasks(data_dir)
    tokens = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t and t.strip()]
    if not tokens:
        raise ValueError("no tasks given")
    out: list[str] = []
    for token in tokens:
        key = token.lower()
        if key == "full":
            if not pack:
                raise ValueError(f"suite 'full' means every task of the data pack, and {data_dir} has no tasks.json")
            names = list(pack)
        elif key == "lite":
            names = list(LITE)
        elif key in CATEGORY_TYPES:
            names = [n for n, e in pack.items() if e.get("type") == CATEGORY_TYPES[key]]
            if not names:
                raise ValueError(f"the data pack {data_dir} has no {CATEGORY_TYPES[key]} task; name MTEB tasks to load "
                                 f"from the hub instead (e.g. SciDocsRR, AskUbuntuDupQuestions for reranking)")
        else:
            names = [task_spec(token, data_dir).name]
        out += [n for n in names if n not in out]
    return out
