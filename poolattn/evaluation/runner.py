"""evaluate(): run tasks through mteb.evaluate, write mteb result JSONs, per-item scores and a summary."""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..distributed import broadcast, world
from ..fileio import write_json, write_text
from ..tokenization import counting_truncation
from .encoders import EncodeRunner, PoolattnEncoder, mteb_encoder
from .instructions import load_overrides
from .items import Source, items_path, needs_predictions, query_part, write_part
from .loading import fingerprint, load_model
from .pack import encode_cost, load_task, main_split
from .selection import DEFAULT_LANGUAGES, default_data_dir, resolve_tasks, task_spec
from .summary import TaskScore, clock, write_summary
from .tasktypes import task_type

PROGRESS_FILE = "progress.json"  # in output_dir: the tasks finished so far, read back by a rerun


def embedding_cache_dir() -> Path:
    from ..backbone import cache_dir

    return cache_dir() / "embeddings"


def _capture_query_scores(task: Any, sink: dict) -> None:
    """Keep pytrec_eval's per-query scores through AbsTaskRetrieval's task_specific_scores hook (of every task an
    aggregate task combines: keys are then (task, subset, split))."""
    if task.is_aggregate:
        for part in task.tasks:
            sub: dict = {}
            _capture_query_scores(part, sub)
            sink[part.metadata.name] = sub
        return
    original = task.task_specific_scores

    def hook(scores, qrels, results, hf_split, hf_subset):
        sink[(hf_subset, hf_split)] = scores
        return original(scores, qrels, results, hf_split=hf_split, hf_subset=hf_subset)
    task.task_specific_scores = hook


def _aggregate_items(task: Any, query_scores: dict) -> list[dict[str, Any]]:
    """Per-query scores of every task an aggregate combines, one part each (mteb's score is the mean over them)."""
    parts = []
    for name, sink in query_scores.items():
        for (subset, split), per_query in sink.items():
            parts.append({"split": split, "subset": f"{name}/{subset}", **query_part(per_query)})
    return parts


def _items(task: Any, predictions: dict, query_scores: dict, result: Any) -> list[dict[str, Any]]:
    """Per-item scores of every (subset, split) evaluated: what paired significance tests need (format and reader:
    poolattn.evaluation.items, one entry per task type)."""
    parts = []
    for split, subset_scores in result.scores.items():
        for scores in subset_scores:
            subset = scores["hf_subset"]
            src = Source(task, subset, split, scores, predictions.get(subset, {}).get(split),
                         query_scores.get((subset, split)))
            parts.append(write_part(task.metadata.type, src))
    return parts


def _finished(output: Path, settings: dict[str, Any]) -> dict[str, TaskScore]:
    """Tasks a previous run into `output` finished with these settings (model fingerprint, instructions, languages,
    data, mteb version), whose result and items files are still there: a rerun reuses them instead of scoring them
    again (an interrupted full-suite run spends hours; each task's record is written once its files are)."""
    path = output / PROGRESS_FILE
    try:
        record = json.loads(path.read_text())
        if record.get("settings") != settings:
            return {}
        done = {name: TaskScore.model_validate(row) for name, row in record["tasks"].items()}
    except (FileNotFoundError, ValueError, KeyError, TypeError):  # none yet, unreadable, another version's: rescore
        return {}
    return {n: s for n, s in done.items()
            if (output / f"{n}.json").exists() and items_path(output, n).exists()}


def _record(output: Path, settings: dict[str, Any], scores: Mapping[str, TaskScore]) -> None:
    write_json(output / PROGRESS_FILE, {"settings": settings, "tasks": {n: s.model_dump() for n, s in scores.items()}})


def evaluate(model: Any, tasks: str | Iterable[str], data_dir: str | Path | None = None,
             output_dir: str | Path | None = None, instructions: Mapping[str, str | None] | str | Path | None = None,
             batch_size: int = 32, cache: bool = True, progress: bool = True,
             languages: Iterable[str] | None = DEFAULT_LANGUAGES, resume: bool = True, all_splits: bool = False,
             dedup: bool = True, dimensions: int | None = None) -> dict[str, TaskScore]:
    """Score a model on tasks with mteb's evaluators; returns {task name: TaskScore} in task order.

    model: EmbeddingModel, SentenceTransformer, or anything `load_model` takes. tasks: names, suites, categories
    (see resolve_tasks). instructions: overrides of the instruction table (dict or YAML/JSON file). With output_dir,
    writes <task>.json (mteb's result format), <task>.items.json (per-item scores), summary.json and summary.md.
    cache: reuse embeddings under $POOLATTN_CACHE/embeddings/<model fingerprint>/. languages: the subsets of
    multilingual hub tasks kept (ISO 639-3, default English as on the English leaderboard; None: all).
    resume: with output_dir, tasks that an earlier run into it finished with the same model and settings are read
    back from its progress.json instead of being scored again (False: score every task anew).
    all_splits: evaluate every split of each task; default: only the main split (the leaderboard's, which the main
    score is read from), e.g. AmazonCounterfactualClassification's test and not its validation split.
    dedup: encode each distinct text once per task and side (exact: the vectors are scattered back); False: every
    text as mteb passes it (to measure what dedup saves; nor sorted by length across the call).
    dimensions: score the vectors cut to their first `dimensions` components and renormalised (a Matryoshka width;
    summary.json records it and whether the model was trained at it); the embedding cache keeps full vectors, so
    every width reuses them. None: the full width.
    """
    import datasets
    import mteb
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    data_dir = Path(data_dir or default_data_dir())
    names = resolve_tasks(tasks, data_dir)
    model = load_model(model)
    overrides = load_overrides(instructions)
    encoder, key = mteb_encoder(model, overrides)
    width_note = _check_dimensions(model, encoder.mteb_model_meta.embed_dim, dimensions)
    output = Path(output_dir) if output_dir is not None else None
    if world()[0] != 0:  # under a process group every rank encodes its share; rank 0 writes and reports
        output, progress = None, False
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True, quiet=not progress)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not progress, transient=False)
    enc_bar = bars.add_task("encode", total=None, visible=False)
    model_id = fingerprint(model)
    settings = json.loads(json.dumps({"model": model_id, "instructions": overrides, "data_dir": str(data_dir),
                                      "languages": None if languages is None else sorted(languages),
                                      "splits": "all" if all_splits else "main",
                                      "mteb_version": mteb.__version__}, default=str))
    if dimensions is not None:  # only then: progress.json of full-width runs reads as before
        settings["dimensions"] = dimensions
    earlier = _finished(output, settings) if output is not None and resume else {}  # kept in progress.json
    finished = broadcast({n: s for n, s in earlier.items() if n in names})  # every rank skips the same tasks
    runner = EncodeRunner(encoder, embedding_cache_dir() / model_id if cache else None, key,
                          on_progress=lambda done, total: bars.update(enc_bar, completed=done, total=total,
                                                                      visible=True), dedup=dedup,
                          dimensions=dimensions)
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    results: dict[str, TaskScore] = {}
    start = time.monotonic()
    try:
        with bars:
            console.log(f"loading {len(names)} task(s) from {data_dir}")
            if width_note:
                console.log(width_note)
            loaded = []
            for name in names:
                spec = task_spec(name, data_dir)
                task = load_task(spec, languages, all_splits)
                try:
                    cost = encode_cost(task)
                except Exception:  # an odd hub dataset shape only costs the ETA its accuracy
                    cost = None
                loaded.append((spec, task, cost))
            known = [c for _, _, c in loaded if c]
            costs = [c or (sum(known) / len(known) if known else 1.0) for _, _, c in loaded]
            left = sum(c for (spec, _, _), c in zip(loaded, costs) if spec.name not in finished)
            overall = bars.add_task("tasks", total=left)
            done_cost = 0.0
            for k, ((spec, task, _), cost) in enumerate(zip(loaded, costs), 1):
                eta = ""
                if done_cost:
                    eta = f"  ETA {clock((time.monotonic() - start) / done_cost * (left - done_cost))}"
                bars.update(overall, description=f"[{k}/{len(loaded)}] {spec.name}{eta}")
                if spec.name in finished:
                    results[spec.name] = s = finished[spec.name]
                    console.log(f"[{k}/{len(loaded)}] {s.task}: {s.main_metric} {s.main_score_x100:.2f} "
                                f"(finished by an earlier run: {output / PROGRESS_FILE})")
                    continue  # not in the ETA: its cost was paid before
                bars.update(enc_bar, description=f"  encoding ({spec.name})", completed=0, total=None)
                results[spec.name] = _run_one(spec, task, runner, encoder, batch_size, output, mteb)
                if output is not None:
                    _record(output, settings, {**earlier, **results})
                done_cost += cost
                bars.update(overall, completed=done_cost)
                s = results[spec.name]
                console.log(f"[{k}/{len(loaded)}] {s.task}: {s.main_metric} {s.main_score_x100:.2f} "
                            f"({s.seconds:.1f} s, {s.encoded} texts encoded{_cut(s)})")
    finally:
        runner.close()
        if bars_were_on:
            datasets.enable_progress_bars()
    if output is not None:
        meta = encoder.mteb_model_meta
        width = {} if dimensions is None else {"dimensions": dimensions, "trained_width": _trained(model, dimensions)}
        write_summary(results, output, {"model": meta.name, "revision": meta.revision, "mteb_version": mteb.__version__,
                                        "data_dir": str(data_dir), "splits": settings["splits"],
                                        "seconds": round(time.monotonic() - start, 1), **width})
    return results


def _trained(model: Any, dimensions: int) -> bool | None:
    """Whether the model was trained at this width: a poolattn model's recorded Matryoshka widths, or the
    `matryoshka_dimensions` a sentence-transformers model's config.json declares (vLLM's key; poolattn's exports
    write it); None: not recorded."""
    from ..matryoshka import is_trained_width

    config = getattr(model, "config", None)  # ModelConfig; a sentence-transformers model's transformers config
    if hasattr(config, "matryoshka_dims"):
        return is_trained_width(config, model.embedding_dim, dimensions)
    declared = getattr(config, "matryoshka_dimensions", None)
    return dimensions in declared if declared else None


def _check_dimensions(model: Any, width: int | None, dimensions: int | None) -> str | None:
    """ValueError for a width the model cannot give; else the console's line on it (None: the full width)."""
    if dimensions is None:
        return None
    if dimensions < 1 or (width is not None and dimensions > width):
        raise ValueError(f"dimensions {dimensions}: give a width between 1 and the model's embedding width "
                         f"{width or '(unknown)'}")
    trained = _trained(model, dimensions)
    how = {True: "a width the model was trained at", False: "not a width the model was trained at (plain "
           "truncation)", None: "whether the model was trained at it is not recorded"}[trained]
    return f"scoring the first {dimensions} of {width} dimensions, renormalised: {how}"


def _cut(score: TaskScore) -> str:
    return f", {score.truncated} cut at max_length" if score.truncated else ""


@contextlib.contextmanager
def _quiet_superseded():
    """mteb warns twice (log + warning) per run that e.g. STSBenchmark has a .v2; we run the original tasks on
    purpose (their published scores are the leaderboard's), so the message is noise here."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "is superseded by" not in record.getMessage()

    drop = _Drop()
    # A logger's filter sees only records logged on it (not its children's): this is the one that warns.
    log = logging.getLogger("mteb.abstasks.abstask")
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is superseded by.*")
            yield
    finally:
        log.removeFilter(drop)


def _run_one(spec: Any, task: Any, runner: EncodeRunner, encoder: Any, batch_size: int, output: Path | None,
             mteb: Any) -> TaskScore:
    from mteb.types import PromptType

    ours = isinstance(encoder, PoolattnEncoder)  # a poolattn model: its tokenization counts truncated texts
    if ours:
        encoder.aliases[spec.mteb_task] = spec.name
    kind = task.metadata.type
    queries = task_type(kind).queries
    query_scores: dict = {}
    if queries:
        _capture_query_scores(task, query_scores)
    encoded_before = runner.encoded
    t0, c0 = time.monotonic(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if needs_predictions(kind) else None
        with _quiet_superseded(), counting_truncation() as cut:
            res = mteb.evaluate(runner, task, cache=None, overwrite_strategy="always", prediction_folder=folder,
                                encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                                show_progress_bar=False, co2_tracker=False, raise_error=True)
        predictions = {}
        if folder is not None:
            predictions = json.loads((folder / task.prediction_file_name).read_text())
    seconds, cpu_seconds = time.monotonic() - t0, time.process_time() - c0
    result = res.task_results[0]
    split = main_split(task)
    main_score = float(result.get_score(splits=[split]))
    if result.task_name != spec.name and spec.name.endswith("Nano"):  # a derivative, not the MTEB task: say so
        result = result.model_copy(update={"task_name": spec.name})
    instruction = None
    if hasattr(encoder, "instruction"):
        instruction = encoder.instruction(task.metadata, PromptType.query if queries else None)
    score = TaskScore(task=spec.name, mteb_task=spec.mteb_task, type=kind, category=spec.category,
                      source=spec.source, main_metric=task.metadata.main_score, main_score=main_score,
                      seconds=round(seconds, 2), cpu_seconds=round(cpu_seconds, 2),
                      encoded=runner.encoded - encoded_before, truncated=cut.truncated if ours else None,
                      instruction=instruction, main_split=split,
                      splits=list(task.eval_splits))
    if output is not None:
        score.result_file = str(output / f"{spec.name}.json")
        score.items_file = str(items_path(output, spec.name))
        result.to_disk(Path(score.result_file))
        parts = (_aggregate_items(task, query_scores) if task.is_aggregate
                 else _items(task, predictions, query_scores, result))
        # `parts`: the main split's (what main_score is computed on, and what the report tests); other splits apart.
        items = {"task": spec.name, "mteb_task": spec.mteb_task, "type": kind, "main_metric": score.main_metric,
                 "main_score": score.main_score, "main_split": split,
                 "parts": [p for p in parts if p["split"] == split],
                 "other_splits": [p for p in parts if p["split"] != split]}
        write_text(score.items_file, json.dumps(items))
    return score
