"""Contrastive training data: rows `{query, positive, negative?, instruction?}` from JSONL(.gz) files, folders of
them, or hub datasets; several sources mixed by weight, each batch drawn from one source (as E5 and the paper do:
a batch of one task is a harder, cleaner set of in-batch negatives).

The sampler is an endless, deterministic stream of batches whose whole position is a small dict (global step and
each source's epoch and batch index), so a resumed run continues with exactly the batches it would have seen.
"""
from __future__ import annotations

import gzip
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

log = logging.getLogger(__name__)

FIELDS = ("query", "positive", "negative", "instruction")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class Example:
    query: str
    positive: str
    negative: str | None = None
    instruction: str | None = None
    symmetric: bool = False  # the instruction goes on the positive and negative too (as evaluation does for STS)


class SourceConfig(BaseModel):
    """One training source: a JSONL(.gz) file, a folder of them (one source per file), or a hub dataset name."""
    model_config = ConfigDict(extra="forbid")
    path: str
    weight: float | None = None  # sampling weight; None: proportional to the number of rows
    name: str | None = None  # label in logs and metrics; default: the file stem / dataset name
    subset: str | None = None  # hub dataset configuration
    split: str = "train"  # hub dataset split
    # Task instruction for rows that carry none (a row's own `instruction` field overrides it), formatted with the
    # model's instruction_template exactly as evaluation formats it: on the query only (retrieval-like sources), or
    # also on the positive and negative when `symmetric` (NLI, paraphrase, duplicates: evaluated as STS-like tasks).
    instruction: str | None = None
    symmetric: bool = False
    columns: dict[str, str] = {}  # our field -> the source's column, e.g. {"query": "anchor", "positive": "pos"}
    max_rows: int | None = None  # first N rows only (quick runs)

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(FIELDS))
        if bad:
            raise ValueError(f"columns: unknown fields {bad}; valid: {', '.join(FIELDS)}")
        return v

    @field_validator("weight")
    @classmethod
    def _positive_weight(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"weight must be > 0, got {v}")
        return v


@dataclass
class Source:
    name: str
    examples: list[Example]
    weight: float


def parse_row(row: Any, where: str, columns: dict[str, str] | None = None,
              instruction: str | None = None, symmetric: bool = False) -> Example:
    """Validate one row; `where` (file:line or dataset[row]) goes into every error."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    columns = columns or {}
    values: dict[str, str | None] = {}
    for field in FIELDS:
        key = columns.get(field, field)
        v = row.get(key)
        if v is None:
            if field in ("query", "positive"):
                raise ValueError(f"{where}: missing field {key!r} (row has {sorted(row)})")
        elif not isinstance(v, str):
            raise ValueError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
        elif not v.strip():
            raise ValueError(f"{where}: field {key!r} is empty")
        values[field] = v
    return Example(values["query"], values["positive"], values["negative"], values["instruction"] or instruction,
                   symmetric)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) of a JSONL file (.gz too), blank lines skipped; a bad line names file and line."""
    import zlib

    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    with opener(path, "rb") as f:  # bytes, decoded line by line, so a decoding error names its own line
        lines = iter(f)
        while True:
            try:  # reading can fail too: a truncated or corrupt .gz
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, gzip.BadGzipFile, zlib.error) as err:
                raise ValueError(f"{path}:{lineno + 1}: truncated or corrupt compressed file ({err})") from None
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text ({err.reason}, byte "
                                 f"{raw[err.start:err.start + 1]!r} at column {err.start + 1}); save it as UTF-8") \
                    from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            yield lineno, row


def read_jsonl(path: str | Path, columns: dict[str, str] | None = None, instruction: str | None = None,
               max_rows: int | None = None, symmetric: bool = False) -> list[Example]:
    out: list[Example] = []
    for lineno, row in iter_jsonl(path):
        out.append(parse_row(row, f"{path}:{lineno}", columns, instruction, symmetric))
        if max_rows is not None and len(out) >= max_rows:
            break
    if not out:
        raise ValueError(f"{path}: no rows")
    return out


def read_hub(spec: SourceConfig) -> list[Example]:
    """A dataset by name through `datasets.load_dataset` (needs the hub or its local cache)."""
    from datasets import load_dataset

    ds = load_dataset(spec.path, spec.subset, split=spec.split)
    if spec.max_rows is not None:
        ds = ds.select(range(min(spec.max_rows, len(ds))))
    label = f"{spec.path}[{spec.subset or ''}:{spec.split}]"
    return [parse_row(row, f"{label} row {i}", spec.columns, spec.instruction, spec.symmetric)
            for i, row in enumerate(ds)]


def _resolve(path: str, data_dir: str | Path | None) -> Path | None:
    """A relative path is looked up under data_dir first, then the working directory; None if neither has it."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else ([Path(data_dir) / p] if data_dir else []) + [p]
    return next((c for c in candidates if c.exists()), None)


def load_sources(specs: list[SourceConfig], data_dir: str | Path | None = None) -> list[Source]:
    """Every source of the config, folders expanded to one source per JSONL file; weights summing to 1."""
    if any(spec.weight is not None for spec in specs) and any(spec.weight is None for spec in specs):
        raise ValueError("give every training source a weight, or none (then each is weighted by its size)")
    sources: list[Source] = []
    for spec in specs:
        path = _resolve(spec.path, data_dir)
        if path is None and (spec.path.endswith(JSONL_SUFFIXES + (".json",)) or spec.path.startswith((".", "/", "~"))):
            raise FileNotFoundError(f"training source {spec.path!r} not found (looked under data_dir {data_dir} "
                                    f"and the working directory)")
        if path is None:  # not a local path: a hub dataset name
            try:
                group = [Source(spec.name or spec.path, read_hub(spec), 1.0)]
            except OSError as err:  # not found or unreachable: say where it was looked for, not only the hub's words
                where = f"data_dir {data_dir}" + ("" if data_dir is None or Path(data_dir).is_dir() else
                                                  " (no such folder)")
                raise FileNotFoundError(f"training source {spec.path!r}: not under {where} nor the working "
                                        f"directory, and not loadable from the hub ({err})") from err
        else:
            files = sorted(f for f in path.iterdir() if f.name.endswith(JSONL_SUFFIXES)) if path.is_dir() else [path]
            if not files:
                raise FileNotFoundError(f"{path}: no *.jsonl or *.jsonl.gz files")
            group = []
            for f in files:
                stem = f.name.removesuffix(".gz").removesuffix(".jsonl")
                name = (f"{spec.name}/{stem}" if spec.name else stem) if path.is_dir() else (spec.name or stem)
                group.append(Source(name, read_jsonl(f, spec.columns, spec.instruction, spec.max_rows, spec.symmetric), 1.0))
        total = sum(len(s.examples) for s in group)
        for s in group:  # a folder's weight is shared among its files by size; no weight: size itself
            s.weight = (spec.weight * len(s.examples) / total) if spec.weight is not None else float(len(s.examples))
        sources.extend(group)
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"training source names must be unique; repeated: {dup} (set `name:`)")
    total = sum(s.weight for s in sources)
    for s in sources:
        s.weight /= total
    return sources


def pack_batches(order: np.ndarray, examples: list[Example], batch_size: int) -> list[list[int]]:
    """Fill batches in `order`, deferring a row to the next batch when its query or positive text is already in
    the current one (it would be a false in-batch negative); the incomplete last batch is dropped."""
    pending, batches = deque(int(i) for i in order), []
    while len(pending) >= batch_size:
        batch, seen, skipped = [], set(), []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            keys = (examples[i].query, examples[i].positive)
            if keys[0] in seen or keys[1] in seen:
                skipped.append(i)
            else:
                batch.append(i)
                seen.update(keys)
        pending.extendleft(reversed(skipped))
        if len(batch) < batch_size:
            break
        batches.append(batch)
    return batches


@dataclass
class Batch:
    source: str
    examples: list[Example]


class MixedBatchSampler:
    """Endless deterministic batches: step t draws a source with probability = weight (from a generator seeded
    with (seed, t)), then that source's next batch of its current epoch's shuffled, duplicate-free packing."""

    def __init__(self, sources: list[Source], batch_size: int, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sources, self.batch_size, self.seed = sources, batch_size, seed
        self.weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.step = 0
        self.epochs = [0] * len(sources)
        self.positions = [0] * len(sources)
        self._plans: dict[int, tuple[int, list[list[int]]]] = {}
        for k, s in enumerate(sources):
            if not self._plan(k):
                raise ValueError(f"training source {s.name!r} has {len(s.examples)} rows, too few distinct "
                                 f"queries/positives to fill one batch of {batch_size}")

    def _plan(self, k: int) -> list[list[int]]:
        epoch = self.epochs[k]
        cached = self._plans.get(k)
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self.seed, k, epoch])
            order = rng.permutation(len(self.sources[k].examples))
            self._plans[k] = (epoch, pack_batches(order, self.sources[k].examples, self.batch_size))
        return self._plans[k][1]

    def next_batch(self) -> Batch:
        k = int(np.random.default_rng([self.seed, 1 << 20, self.step]).choice(len(self.sources), p=self.weights))
        plan = self._plan(k)
        if self.positions[k] >= len(plan):
            self.epochs[k] += 1
            self.positions[k] = 0
            plan = self._plan(k)
        idx = plan[self.positions[k]]
        self.positions[k] += 1
        self.step += 1
        source = self.sources[k]
        return Batch(source.name, [source.examples[i] for i in idx])

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size,
                "sources": {s.name: {"epoch": e, "index": p}
                            for s, e, p in zip(self.sources, self.epochs, self.positions)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [s.name for s in self.sources]
        if sorted(state["sources"]) != sorted(names) or state["batch_size"] != self.batch_size \
                or state["seed"] != self.seed:
            raise ValueError(f"sampler state does not match this data: saved sources {sorted(state['sources'])}, "
                             f"batch {state['batch_size']}, seed {state['seed']}; now {sorted(names)}, "
                             f"batch {self.batch_size}, seed {self.seed}")
        self.step = state["step"]
        self.epochs = [state["sources"][n]["epoch"] for n in names]
        self.positions = [state["sources"][n]["index"] for n in names]
