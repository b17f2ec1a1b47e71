"""mteb task objects filled from the offline data pack (or left to mteb's hub loader); which tasks: selection.py.

Every task is scored by mteb's own task class; only the data loading is ours. A pack task's rows go straight into the
`dataset` attribute in the shape each AbsTask subtype evaluates (the pack stores them already transformed, e.g. the
flat clustering list that `.v2` tasks use), and `data_loaded` is set, so mteb never touches the hub for it.
Nano retrieval tasks are scored through their base task's definition (tasks.json `mteb_task`).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from .selection import DEFAULT_LANGUAGES, LEADERBOARD, TaskSpec, TaskUnavailable, pack_tasks
from .tasktypes import TASK_TYPES

# ---- loading the pack's rows into mteb task objects ---------------------------------------------------------------

def _jsonl(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (listed in tasks.json)")
    from ..training.data import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in fields if k not in row]
        if missing:
            raise ValueError(f"{path}:{lineno}: missing field(s) {missing}; the row has {sorted(row)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing (listed in tasks.json)")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if lineno == 1 and row[:2] == ["query-id", "corpus-id"]:
                continue
            try:
                qid, did, score = row[0], row[1], int(float(row[2]))
            except (IndexError, ValueError):
                raise ValueError(f"{path}:{lineno}: expected 'query-id<TAB>corpus-id<TAB>score', got {row}") from None
            qrels.setdefault(qid, {})[did] = score
    return qrels


def _column(rows: list[dict[str, Any]], field: str, path: Path) -> list[Any]:
    values = [r[field] for r in rows]
    kinds = {type(v) for v in values}
    if len(kinds) > 1 and not kinds <= {int, float}:
        raise ValueError(f"{path}: field {field!r} mixes types {sorted(k.__name__ for k in kinds)}")
    return values


def _split_data(task: Any, spec: TaskSpec, split: str, files: Any) -> Any:
    """One split of a pack task in the shape task.type's evaluator expects."""
    from datasets import Dataset

    root = spec.data_dir / spec.entry["path"]
    if spec.type == "STS":
        c1, c2 = task.column_names
        path = root / files
        rows = _jsonl(path, ("sentence1", "sentence2", "score"))
        return Dataset.from_dict({c1: _column(rows, "sentence1", path), c2: _column(rows, "sentence2", path),
                                  "score": [float(r["score"]) for r in rows]})
    if spec.type == "PairClassification":
        path = root / files
        rows = _jsonl(path, ("sentence1", "sentence2", "label"))
        return Dataset.from_dict({task.input1_column_name: _column(rows, "sentence1", path),
                                  task.input2_column_name: _column(rows, "sentence2", path),
                                  task.label_column_name: [int(r["label"]) for r in rows]})
    if spec.type in ("Classification", "Clustering"):
        path = root / files
        rows = _jsonl(path, ("text", "label"))
        return Dataset.from_dict({task.input_column_name: _column(rows, "text", path),
                                  task.label_column_name: _column(rows, "label", path)})
    if TASK_TYPES[spec.type].queries:
        return _retrieval_split(root, split, files)
    raise AssertionError(spec.type)


def _retrieval_split(root: Path, split: str, files: Any) -> dict[str, Any]:
    """BEIR layout (corpus/queries/qrels, optional top_ranked JSONL of {query-id, corpus-ids}), or the old reranking
    rows {query, positive: [...], negative: [...]} converted the way mteb's AbsTaskReranking converts them."""
    from datasets import Dataset

    if isinstance(files, str):  # old reranking format
        path = root / files
        rows = _jsonl(path, ("query", "positive", "negative"))
        corpus, queries, qrels, top = [], [], {}, {}
        for i, r in enumerate(rows):
            if not r["positive"] or not r["negative"]:
                continue  # as mteb: a query needs at least one positive and one negative
            qid = f"{split}_query{i}"
            queries.append({"id": qid, "text": r["query"]})
            docs = [(f"apositive_{qid}_{j:05d}", d, 1) for j, d in enumerate(r["positive"])]
            docs += [(f"negative_{qid}_{j:05d}", d, 0) for j, d in enumerate(r["negative"])]
            corpus += [{"id": d, "title": "", "text": t} for d, t, _ in docs]
            qrels[qid] = {d: s for d, _, s in docs}
            top[qid] = [d for d, _, _ in docs]
        return {"corpus": Dataset.from_list(corpus), "queries": Dataset.from_list(queries), "relevant_docs": qrels,
                "top_ranked": top}
    for key in ("corpus", "queries", "qrels"):
        if key not in files:
            raise ValueError(f"{root}: split {split!r} lists no {key!r} file in tasks.json")
    qrels = _qrels(root / files["qrels"])
    cpath, qpath = root / files["corpus"], root / files["queries"]
    docs = _jsonl(cpath, ("_id", "text"))
    queries = [q for q in _jsonl(qpath, ("_id", "text")) if str(q["_id"]) in qrels]
    top = None
    if files.get("top_ranked"):
        top = {str(r["query-id"]): [str(d) for d in r["corpus-ids"]]
               for r in _jsonl(root / files["top_ranked"], ("query-id", "corpus-ids"))}
    return {
        "corpus": Dataset.from_dict({"id": [str(d["_id"]) for d in docs],
                                     "title": [d.get("title") or "" for d in docs],
                                     "text": _column(docs, "text", cpath)}),
        "queries": Dataset.from_dict({"id": [str(q["_id"]) for q in queries], "text": _column(queries, "text", qpath)}),
        "relevant_docs": qrels,
        "top_ranked": top,
    }


def _pick_subset(task: Any, spec: TaskSpec) -> str:
    """The hf subset a pack task holds: tasks.json `subset`, else English."""
    subsets = list(task.hf_subsets)
    wanted = spec.entry.get("subset") or spec.entry.get("hf_subset")
    if wanted:
        if wanted not in subsets:
            raise ValueError(f"tasks.json: {spec.name} subset {wanted!r} is not one of {spec.mteb_task}'s {subsets}")
        return wanted
    if "default" in subsets:
        return "default"
    if "en" in subsets:
        return "en"
    english = [s for s, langs in task.metadata.hf_subsets_to_langscripts.items() if "eng-Latn" in langs]
    if english:
        return english[0]
    raise ValueError(f"tasks.json: {spec.name} ({spec.mteb_task}) has subsets {subsets}; say which one the pack "
                     f"holds with a 'subset' field")


@lru_cache(maxsize=1)
def _leaderboard() -> dict[str, Any]:
    import mteb

    return {t.metadata.name: t for t in mteb.get_benchmark(LEADERBOARD).tasks}


def main_split(task: Any) -> str:
    """The split whose score is the task's main score: the leaderboard's, else test, else the first evaluated."""
    board = _leaderboard().get(task.metadata.name)
    for split in [*(board.eval_splits if board is not None else []), "test"]:
        if split in task.eval_splits:
            return split
    return task.eval_splits[0]


def hub_task(name: str, languages: Iterable[str] | None = DEFAULT_LANGUAGES) -> Any:
    """The mteb task restricted to the subsets whose languages are all in `languages` (None: every subset); in
    English, to the leaderboard's subsets where it lists the task."""
    import mteb

    languages = list(languages) if languages else None
    try:
        task = mteb.get_task(name, languages=languages, exclusive_language_filter=languages is not None)
    except ValueError as e:  # mteb: "No subsets were found ..."
        raise ValueError(f"task {name!r} has no subset in the languages {languages}; its subsets: "
                         f"{list(mteb.get_task(name).metadata.hf_subsets_to_langscripts)}") from e
    board = _leaderboard().get(name)
    if languages == list(DEFAULT_LANGUAGES) and board is not None and task.metadata.is_multilingual:
        task.hf_subsets = [s for s in task.hf_subsets if s in board.hf_subsets] or task.hf_subsets
    return task


def keep_main_split(task: Any) -> Any:
    """Restrict a task (and every task an aggregate combines) to its main split, through mteb's own
    filter_eval_splits: e.g. AmazonCounterfactualClassification scores test only, not validation and test."""
    for part in (task.tasks if task.is_aggregate else []):
        keep_main_split(part)
    return task.filter_eval_splits([main_split(task)])


def load_task(spec: TaskSpec, languages: Iterable[str] | None = DEFAULT_LANGUAGES, all_splits: bool = False) -> Any:
    """A fresh mteb task object with its data loaded: from the pack, else by mteb from the hub (clear error if not).

    Args:
        spec: the task (task_spec).
        languages: subsets of hub tasks kept (default English; see hub_task).
        all_splits: evaluate every split the task defines (and the pack holds); default: the main split only.

    Aggregate tasks (e.g. CQADupstackRetrieval) load every task they combine, and mteb scores them as it combines
    them."""
    import mteb
    from datasets import DatasetDict

    if spec.entry is None:
        task = hub_task(spec.mteb_task, languages)
        if not all_splits:
            keep_main_split(task)
        try:
            for part in (task.tasks if task.is_aggregate else [task]):
                part.load_data()
        except Exception as e:  # any failure here means the same thing to the user
            raise TaskUnavailable(f"task {spec.name!r} is not in the data pack and could not be loaded from the "
                                  f"Hugging Face hub ({type(e).__name__}: {str(e)[:300]}). Tasks in the pack "
                                  f"{spec.data_dir}: {', '.join(pack_tasks(spec.data_dir)) or 'none'}") from e
        return task
    task = mteb.get_task(spec.mteb_task)
    splits = spec.entry.get("splits") or {}
    eval_splits = [s for s in task.metadata.eval_splits if s in splits]
    if not eval_splits:
        raise ValueError(f"tasks.json: {spec.name} has splits {sorted(splits)}, but {spec.mteb_task} evaluates "
                         f"{task.metadata.eval_splits}")
    task.filter_eval_splits(eval_splits)
    if not all_splits:
        eval_splits = list(keep_main_split(task).eval_splits)
    needed = list(eval_splits)
    if spec.type == "Classification" and task.train_split not in needed:
        if task.train_split not in splits:
            raise ValueError(f"tasks.json: {spec.name} needs a {task.train_split!r} split to train the classifier")
        needed.append(task.train_split)
    data = {s: _split_data(task, spec, s, splits[s]) for s in needed}
    subset = _pick_subset(task, spec)
    if TASK_TYPES[spec.type].queries:
        task.dataset = {subset: data}
    else:
        data = DatasetDict(data)
        task.dataset = {subset: data} if task.metadata.is_multilingual else data
    task.hf_subsets = [subset]
    task.data_loaded = True
    return task


def encode_cost(task: Any) -> float:
    """Characters the task will encode (a proxy for time, for the ETA); mirrors what each evaluator embeds."""
    def chars(texts: Iterable[Any]) -> int:
        return sum(len(t) for t in texts if isinstance(t, str))

    if task.is_aggregate:
        return sum(encode_cost(part) for part in task.tasks)
    total = 0.0
    for subset in task.hf_subsets:
        data = task.dataset[subset] if subset in task.dataset else task.dataset
        for split in task.eval_splits:
            part = data[split]
            kind = task.metadata.type
            if TASK_TYPES[kind].queries:
                total += chars(part["queries"]["text"]) + chars(part["corpus"]["text"]) + chars(part["corpus"]["title"])
            elif kind == "STS":
                total += sum(chars(part[c]) for c in task.column_names)
            elif kind == "PairClassification":
                total += chars(part[task.input1_column_name]) + chars(part[task.input2_column_name])
            elif kind == "Clustering":
                frac = task.max_fraction_of_documents_to_embed or 1.0
                total += frac * chars(part[task.input_column_name])
            elif kind == "Classification":
                train = data[task.train_split]
                n_labels = len(set(train[task.label_column_name]))
                share = min(1.0, task.n_experiments * task.samples_per_label * n_labels / max(len(train), 1))
                total += chars(part[task.input_column_name]) + share * chars(train[task.input_column_name])
    return max(total, 1.0)
