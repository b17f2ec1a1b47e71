"""Reading an experiment folder for the report (its layout: poolattn.experiment.layout; summary.json:
poolattn.evaluation.summary; per-item files: poolattn.evaluation.items).

Designs are the config's designs in order, then any other run folder with results (but `peer-*`, a peer's); a
design or reference row without `summary.json` yet is listed as missing, so a report can be made of a running
experiment.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..evaluation.items import load_items
from ..evaluation.summary import SUMMARY_FILE, TaskScore, read_summary
from ..evaluation.tasktypes import TASK_TYPES
from ..experiment import ExperimentConfig
from ..experiment.layout import ExperimentLayout
from ..experiment.peers import PEER_PREFIX, peer_rows
from ..stats.paired import Items
from ..training.runfolder import metric_rows


@dataclass
class Experiment:
    """Everything the report needs from an experiment folder; per-item files are read on demand."""
    folder: Path
    config: dict
    config_text: str
    environment: dict | None
    designs: list[str]  # trained designs with results, in config order
    baseline: str | None  # the untrained reference row with results, or None (its own setting: baseline_in_tests)
    scores: dict[str, dict[str, TaskScore]]  # design or reference row -> task -> score
    missing: list[str] = field(default_factory=list)  # configured designs and reference rows without results yet
    budget: dict | None = None  # budget.json: the budget chooser's measurement and choice
    # Reference rows with results (the baseline first, then the peers): columns beside the designs, not designs.
    references: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # reference row (with results or not) -> its column label
    # eval.dimensions: width -> run -> task -> score of the vectors cut to that width (runs/<run>/eval-d<N>/)
    width_scores: dict[int, dict[str, dict[str, TaskScore]]] = field(default_factory=dict)

    @property
    def layout(self) -> ExperimentLayout:
        return ExperimentLayout(self.folder)

    @property
    def columns(self) -> list[str]:
        return self.designs + self.references

    def task_type(self, task: str) -> str:
        return next(s[task].type for s in self.scores.values() if task in s)

    @property
    def tasks(self) -> list[str]:
        names = {t for s in self.scores.values() for t in s}
        rank = {c: i for i, c in enumerate(TASK_TYPES)}  # the table's order (MTEB's); unknown types after it
        return sorted(names, key=lambda t: (rank.get(self.task_type(t), len(rank)), self.task_type(t), t))

    def items(self, design: str, task: str) -> Items | list[Items] | None:
        path = self.layout.items(design, task)
        return load_items(path) if path.exists() else None


def design_table(config: dict) -> dict[str, dict]:
    """Every design the config runs (replicated per seed when it lists several), with its settings."""
    try:
        designs = ExperimentConfig.model_validate(config).all_designs()
    except Exception:  # a hand-edited or older config: take its design list as written
        return {d["name"]: d for d in config.get("designs") or [] if isinstance(d, dict) and "name" in d}
    return {d.name: d.model_dump() for d in designs}


def default_seed(config: dict) -> int:
    """The seed of a run that is not a replicate: the first of `seeds`, else `seed`."""
    return (config.get("seeds") or [config.get("seed", 42)])[0]


def load_run_items(exp: Experiment) -> tuple[dict[tuple[str, str], Items | list[Items] | None], list[str]]:
    """Per-item results of every run and task with a score, and a note for each unreadable file."""
    items, notes = {}, []
    for d in exp.columns:
        for t in exp.tasks:
            try:
                items[d, t] = exp.items(d, t) if t in exp.scores[d] else None
            except ValueError as err:
                items[d, t] = None
                notes.append(str(err))
    return items, notes


def load_experiment(folder: str | Path) -> Experiment:
    folder = Path(folder)
    layout = ExperimentLayout(folder)
    if not layout.runs.is_dir():
        raise FileNotFoundError(f"{folder} is not an experiment folder (no runs/); layout: see "
                                f"poolattn.experiment.layout")
    config_text = layout.config.read_text() if layout.config.exists() else ""
    config = yaml.safe_load(config_text) or {}
    environment = json.loads(layout.environment.read_text()) if layout.environment.exists() else None

    baseline = (config.get("baseline") or {}).get("name", "baseline")
    configured = list(design_table(config))
    on_disk = layout.evaluated()
    scores = {name: read_summary(layout.summary(name)) for name in on_disk}
    # Reference rows: the baseline, the configured peers, then peers evaluated before the config dropped them.
    peers = peer_rows(config.get("peers") or [])
    labels = {baseline: f"{baseline} (untrained)"} | {p.name: f"{p.model} (peer)" for p in peers}
    labels |= {d: f"{d[len(PEER_PREFIX):]} (peer)" for d in on_disk if d.startswith(PEER_PREFIX) and d not in labels}
    references = [r for r in labels if r in scores]
    designs = [d for d in configured if d in scores] + [d for d in on_disk if d not in configured and d not in labels]
    if not designs:
        raise ValueError(f"{folder}: no design has results yet ({layout.summary('<design>').relative_to(folder)})")
    budget = json.loads(layout.budget.read_text()) if layout.budget.exists() else None
    expected = configured + ([baseline] if config.get("baseline") else []) + [p.name for p in peers]
    widths = {}
    for n in (config.get("eval") or {}).get("dimensions") or []:
        at = {d: layout.at_width(layout.eval(d), n) / SUMMARY_FILE for d in designs + references}
        widths[n] = {d: read_summary(path) for d, path in at.items() if path.exists()}
    return Experiment(folder, config, config_text, environment, designs,
                      baseline if baseline in scores else None, {d: scores[d] for d in designs + references},
                      [d for d in expected if d not in scores], budget, references, labels, widths)


def training_summary(folder: Path, designs: list[str]) -> dict[str, dict]:
    """Per design: steps trained, time, and the loss at the start and end (mean of the first and last 5 steps),
    plus the adaptation stage's steps and time where there was one, from the trainer's train_summary.json / metrics.jsonl and the runner's timing.json. A design trained for fewer
    steps than configured (a time cap) is a confound the reader must see."""
    layout, out = ExperimentLayout(folder), {}
    for d in designs:
        row: dict[str, Any] = {}
        for path in (layout.train(d) / "train_summary.json", layout.timing(d)):
            if path.exists():
                row.update(json.loads(path.read_text()))
        losses = [r["loss"] for r in metric_rows(layout.train(d)) if "loss" in r]  # contrastive training's
        if losses:
            row["loss_first"] = float(np.mean(losses[:5]))
            row["loss_last"] = float(np.mean(losses[-5:]))
        adapt = metric_rows(layout.train(d), "adapt")  # an adaptation stage before it (MNTP, SimCSE): its own time
        if adapt:
            row["adapt_steps"] = len(adapt)
            row["adapt_elapsed_s"] = adapt[-1].get("elapsed_s")
        if row:
            out[d] = row
    return out


