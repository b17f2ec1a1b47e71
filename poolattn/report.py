"""Experiment report: per-task table, category averages, significance tests (poolattn.stats), plots, config and
environment, as Markdown, a self-contained HTML page (CSS inline, PNGs as data URIs) and JSON.

This module is the one reader of an experiment folder:

    EXPERIMENT/
      experiment.yaml                        the experiment config as run: `designs` (list of {name, ...}) gives the
                                             column order, `baseline.name` the reference row, `report:` the settings
      environment.json                       collect_environment() of the machine that ran it
      runs/<design>/...                      training outputs (not read here)
      runs/<design>/eval/summary.json        {"tasks": {task: {"type": "STS" | "Retrieval" | "Classification" |
                                               "Clustering" | "PairClassification" | "Reranking",
                                               "main_score": float in [0, 1], "seconds": float}}}
      runs/<design>/eval/<task>.items.json   per-item scores for the paired tests (format: see `load_items`)
      runs/<baseline>/eval/...               the untrained backbone, same layout: a reference row, not a design
    written: report.md, report.html, report.json, category_scores.png, task_differences.png

Designs are the config's designs in order, then any other run folder with results; a design without
`summary.json` yet is listed as missing, so a report can be made of a running experiment.
"""
from __future__ import annotations

import base64
import html
import itertools
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from .stats import (Items, PairedResult, WilcoxonResult, holm_adjust, paired_test, score_of, significance,
                    wilcoxon_test, win_tie_loss)

CATEGORIES = ["Classification", "Clustering", "PairClassification", "Reranking", "Retrieval", "STS"]  # MTEB's order
ALL = "All tasks"
ENV_PACKAGES = ["torch", "transformers", "peft", "accelerate", "mteb", "sentence-transformers", "scipy", "numpy",
                "poolattn"]
UP, DOWN, RAW = "▲", "▼", "°"


class ReportSettings(BaseModel):
    """`report:` section of experiment.yaml; command-line options override it."""
    model_config = ConfigDict(extra="forbid")
    reference: str | None = None  # design the per-task differences are drawn against; default: the first design
    n_resamples: int = Field(1000, ge=50)  # permutations and bootstrap resamples per per-dataset test
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int = 0
    baseline_in_tests: bool = False  # also test every design against the untrained baseline


# ---------------------------------------------------------------- reading the folder

def load_items(path: str | Path) -> Items | list[Items]:
    """Parse one `<task>.items.json`, the only place that knows the per-item formats. The evaluation harness writes
    {"type", "main_metric", "parts": [{"split", "subset", ...}]}, one part per mteb subset/split, with
      STS / PairClassification  "similarity" (cosine per pair), "gold"       -> Spearman / average precision
      Classification            "correct_rate" (per example, over mteb's experiments), or "gold" + "predictions"
      Clustering                "v_measure": {level: [one per k-means run]}
      Retrieval / Reranking     "query_ids" + per-query "<main_metric>" (else "ndcg_at_10")
    A flat {"metric", "gold"/"pred" | "scores", "ids"} file (stats.Items fields) is read as one part.
    Several parts come back as a list (the dataset's score is their mean)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        if "parts" not in d:
            return Items(metric=d["metric"], ids=d.get("ids"),
                         **{f: np.asarray(d[f]) for f in ("gold", "pred", "scores") if d.get(f) is not None})
        parts = [_part_items(d["type"], d.get("main_metric"), part)
                 for part in sorted(d["parts"], key=lambda p: (str(p.get("split")), str(p.get("subset"))))]
        return parts[0] if len(parts) == 1 else parts
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: not a per-item score file ({type(err).__name__}: {err})") from err


def _part_items(kind: str, main_metric: str | None, part: dict) -> Items:
    if kind in ("STS", "PairClassification"):
        return Items("spearman" if kind == "STS" else "ap", gold=np.asarray(part["gold"], float),
                     pred=np.asarray(part["similarity"], float))
    if kind == "Classification":
        rate = part.get("correct_rate")
        if rate is None:  # per-example share of mteb's experiments that got it right
            gold = np.asarray(part["gold"])
            rate = np.mean([np.asarray(p) == gold for p in part["predictions"]], axis=0)
        return Items("mean_accuracy", scores=np.asarray(rate, float))
    if kind == "Clustering":
        runs = part["v_measure"]
        runs = [v for k in sorted(runs) for v in runs[k]] if isinstance(runs, dict) else runs
        return Items("v_measure", scores=np.asarray(runs, float))
    if kind in ("Retrieval", "Reranking"):
        metric = main_metric if main_metric in part else "ndcg_at_10"
        return Items(metric, ids=list(part["query_ids"]), scores=np.asarray(part[metric], float))
    raise ValueError(f"task type {kind!r} has no per-item scores; known: STS, PairClassification, Classification, "
                     "Clustering, Retrieval, Reranking")


@dataclass
class TaskScore:
    type: str
    main_score: float
    seconds: float | None = None


@dataclass
class Experiment:
    """Everything the report needs from an experiment folder; per-item files are read on demand."""
    folder: Path
    config: dict
    config_text: str
    environment: dict | None
    designs: list[str]  # trained designs with results, in config order
    baseline: str | None  # reference row with results, or None
    scores: dict[str, dict[str, TaskScore]]  # design or baseline -> task -> score
    missing: list[str] = field(default_factory=list)  # configured designs without results yet

    @property
    def columns(self) -> list[str]:
        return self.designs + ([self.baseline] if self.baseline else [])

    def task_type(self, task: str) -> str:
        return next(s[task].type for s in self.scores.values() if task in s)

    @property
    def tasks(self) -> list[str]:
        names = {t for s in self.scores.values() for t in s}
        rank = {c: i for i, c in enumerate(CATEGORIES)}
        return sorted(names, key=lambda t: (rank.get(self.task_type(t), len(rank)), self.task_type(t), t))

    def items(self, design: str, task: str) -> Items | list[Items] | None:
        path = self.folder / "runs" / design / "eval" / f"{task}.items.json"
        return load_items(path) if path.exists() else None


def _read_summary(path: Path) -> dict[str, TaskScore]:
    """summary.json's "tasks": rows with a "task" field (the harness's), or a dict keyed by task."""
    try:
        tasks = json.loads(path.read_text())["tasks"]
        tasks = {row["task"]: row for row in tasks} if isinstance(tasks, list) else tasks
        return {t: TaskScore(v["type"], float(v["main_score"]), v.get("seconds"))
                for t, v in tasks.items() if v.get("main_score") is not None}
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"{path}: expected {{'tasks': {{task: {{'type', 'main_score', 'seconds'}}}}}} "
                         f"({type(err).__name__}: {err})") from err


def design_table(config: dict) -> dict[str, dict]:
    """Every design the config runs (replicated per seed when it lists several), with its settings."""
    from .experiment import ExperimentConfig  # here: experiment imports this module

    try:
        designs = ExperimentConfig.model_validate(config).all_designs()
    except Exception:  # noqa: BLE001 -- a hand-edited or older config: take its design list as written
        return {d["name"]: d for d in config.get("designs") or [] if isinstance(d, dict) and "name" in d}
    return {d.name: d.model_dump() for d in designs}


def load_experiment(folder: str | Path) -> Experiment:
    folder = Path(folder)
    cfg_path = folder / "experiment.yaml"
    if not (folder / "runs").is_dir():
        raise FileNotFoundError(f"{folder} is not an experiment folder (no runs/); layout: see poolattn.report")
    config_text = cfg_path.read_text() if cfg_path.exists() else ""
    config = yaml.safe_load(config_text) or {}
    env_path = folder / "environment.json"
    environment = json.loads(env_path.read_text()) if env_path.exists() else None

    baseline = (config.get("baseline") or {}).get("name", "baseline")
    configured = list(design_table(config))
    on_disk = sorted(p.parent.parent.name for p in (folder / "runs").glob("*/eval/summary.json"))
    scores = {name: _read_summary(folder / "runs" / name / "eval" / "summary.json") for name in on_disk}
    designs = [d for d in configured if d in scores] + [d for d in on_disk if d not in configured and d != baseline]
    if not designs:
        raise ValueError(f"{folder}: no design has results yet (runs/<design>/eval/summary.json)")
    return Experiment(folder, config, config_text, environment, designs,
                      baseline if baseline in scores else None,
                      {d: scores[d] for d in designs + ([baseline] if baseline in scores else [])},
                      [d for d in configured if d not in scores])


def training_summary(folder: Path, designs: list[str]) -> dict[str, dict]:
    """Per design: steps trained, time, and the loss at the start and end (mean of the first and last 5 steps),
    from the trainer's train_summary.json / metrics.jsonl and the runner's timing.json. A design trained for fewer
    steps than configured (a time cap) is a confound the reader must see."""
    out = {}
    for d in designs:
        run = folder / "runs" / d
        row: dict[str, Any] = {}
        for name in ("train/train_summary.json", "timing.json"):
            if (run / name).exists():
                row.update(json.loads((run / name).read_text()))
        metrics = run / "train" / "metrics.jsonl"
        if metrics.exists():
            losses = [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]
            if losses:
                row["loss_first"] = float(np.mean(losses[:5]))
                row["loss_last"] = float(np.mean(losses[-5:]))
        if row:
            out[d] = row
    return out


def collect_environment() -> dict:
    """Versions and hardware of this machine, for environment.json (the experiment runner writes it)."""
    from importlib import metadata

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = round(mem_kb / 2 ** 20, 1)
    except (OSError, StopIteration):
        memory = None
    env = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
           "platform": platform.platform(), "cpu": cpu, "cpu_cores": os.cpu_count(),
           "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "memory_gib": memory, "packages": {p: version(p) for p in ENV_PACKAGES}, "gpus": []}
    try:  # the code version the experiment ran with, when run from a git checkout
        import subprocess

        root = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["poolattn_commit"] = (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        env["poolattn_commit"] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpus"] = [f"{torch.cuda.get_device_name(i)} "
                           f"({torch.cuda.get_device_properties(i).total_memory / 2 ** 30:.0f} GiB)"
                           for i in range(torch.cuda.device_count())]
            env["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return env


# ---------------------------------------------------------------- analysis

def settings_for(exp: Experiment, **overrides) -> ReportSettings:
    """experiment.yaml's `report:` section with non-None overrides applied."""
    raw = dict(exp.config.get("report") or {})
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return ReportSettings.model_validate(raw)


def analyse(exp: Experiment, settings: ReportSettings, progress: bool = True) -> dict:
    """All numbers of the report, JSON-ready: scores, category means, per-dataset tests (every pair of tested
    designs x task, one Holm family), Wilcoxon tests (every pair x category and over all tasks, another family)."""
    ref = settings.reference or exp.designs[0]
    if ref not in exp.columns:
        raise ValueError(f"unknown reference design {ref!r}; valid: {exp.columns}")
    tested = exp.designs + ([exp.baseline] if exp.baseline and (settings.baseline_in_tests or ref == exp.baseline)
                            else [])
    pairs = list(itertools.combinations(tested, 2))
    tasks = exp.tasks
    cats = [c for c in CATEGORIES if any(exp.task_type(t) == c for t in tasks)]
    cats += sorted({exp.task_type(t) for t in tasks} - set(cats))
    groups = {c: [t for t in tasks if exp.task_type(t) == c] for c in cats} | {ALL: tasks}
    score = lambda d, t: exp.scores[d][t].main_score if t in exp.scores[d] else None  # noqa: E731

    notes = [f"design {d!r} has no results yet (runs/{d}/eval/summary.json)" for d in exp.missing]
    items: dict[tuple[str, str], Items | list[Items] | None] = {}
    for d in tested:
        for t in tasks:
            try:
                items[d, t] = exp.items(d, t) if t in exp.scores[d] else None
            except ValueError as err:
                items[d, t] = None
                notes.append(str(err))
            it = items[d, t]
            if it is not None and abs(score_of(it) - score(d, t)) > 0.005:
                metric = it.metric if isinstance(it, Items) else it[0].metric
                notes.append(f"{d} / {t}: per-item {metric} {100 * score_of(it):.2f} differs from the main score "
                             f"{100 * score(d, t):.2f}; the paired test compares the per-item metric")

    tests: dict[tuple[str, str, str], PairedResult] = {}
    jobs = [(a, b, t) for a, b in pairs for t in tasks]
    from rich.progress import track

    for a, b, t in track(jobs, description="paired tests", disable=not progress or not jobs):
        if items.get((a, t)) is not None and items.get((b, t)) is not None:
            try:
                tests[a, b, t] = paired_test(items[a, t], items[b, t], settings.n_resamples, settings.confidence,
                                             settings.seed)
            except ValueError as err:
                notes.append(f"{a} vs {b} on {t}: no paired test ({err})")
    untested = sorted({t for a, b, t in jobs} - {t for _, _, t in tests})
    if untested:
        notes.append(f"no per-dataset tests for {', '.join(untested)}: a design lacks the task or its per-item "
                     "scores")
    holm_adjust(list(tests.values()))

    wilcoxon: dict[tuple[str, str, str], WilcoxonResult] = {}
    for a, b in pairs:
        for g, ts in groups.items():
            common = [t for t in ts if score(a, t) is not None and score(b, t) is not None]
            wilcoxon[a, b, g] = wilcoxon_test([score(a, t) for t in common], [score(b, t) for t in common],
                                              settings.alpha)
    holm_adjust(list(wilcoxon.values()))

    wtl = win_tie_loss(tests, tested, settings.alpha)
    means = {}
    for g, ts in groups.items():
        common = [t for t in ts if all(score(d, t) is not None for d in exp.columns)]
        if len(common) < len(ts):
            notes.append(f"{g} averages use the {len(common)} of {len(ts)} tasks every column has")
        means[g] = {"tasks": common, "mean": {d: float(np.mean([score(d, t) for t in common])) if common else None
                                               for d in exp.columns}}
    return {
        "experiment": exp.config.get("name", exp.folder.name), "folder": str(exp.folder),
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "settings": settings.model_dump() | {"reference": ref},
        "designs": exp.designs, "baseline": exp.baseline, "reference": ref, "tested": tested, "missing": exp.missing,
        "tasks": {t: {"type": exp.task_type(t), "scores": {d: score(d, t) for d in exp.columns},
                      "seconds": {d: exp.scores[d][t].seconds for d in exp.columns if t in exp.scores[d]}}
                  for t in tasks},
        "categories": means,
        "paired_tests": [{"a": a, "b": b, "task": t, **r.to_dict()} for (a, b, t), r in tests.items()],
        "wilcoxon": [{"a": a, "b": b, "category": g, **r.to_dict()} for (a, b, g), r in wilcoxon.items()],
        "win_tie_loss": wtl, "notes": notes, "config": exp.config, "environment": exp.environment,
        "training": training_summary(exp.folder, exp.columns),
        "replicates": replicates(exp.config, exp.designs, means),
    }


def replicates(config: dict, designs: list[str], means: dict) -> dict[str, dict]:
    """Designs replicated over seeds: per configured design, its runs and the mean/sd of each category average."""
    groups: dict[str, list[str]] = {}
    for name, d in design_table(config).items():
        if d.get("replicate_of") and name in designs:
            groups.setdefault(d["replicate_of"], []).append(name)
    out = {}
    for base, runs in groups.items():
        vals = {g: [info["mean"][r] for r in runs if info["mean"].get(r) is not None] for g, info in means.items()}
        out[base] = {"runs": runs,
                     "mean": {g: float(np.mean(v)) if v else None for g, v in vals.items()},
                     "sd": {g: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for g, v in vals.items()}}
    return out


def _oriented(rows: list[dict], key: str, a: str, b: str, k: str, cls):
    """The result of b - a (flipping a stored a-b test) as a stats result object, or None."""
    for r in rows:
        if r[key] == k and {r["a"], r["b"]} == {a, b}:
            res = cls(**{f: v for f, v in r.items() if f not in ("a", "b", key)})
            return res if r["b"] == b else res.flip()
    return None


# ---------------------------------------------------------------- plots

def _colors(columns: list[str], baseline: str | None) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    out, i = {}, 0
    for c in columns:
        if c == baseline:
            out[c] = "0.6"
        else:
            out[c], i = cmap(i % 10), i + 1
    return out


def plot_categories(data: dict, path: Path) -> Path:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend change

    cols = data["designs"] + ([data["baseline"]] if data["baseline"] else [])
    groups = list(data["categories"])
    colors = _colors(cols, data["baseline"])
    width = 0.8 / len(cols)
    fig = Figure(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(cols) / 3)), 4.2), dpi=110)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    for i, c in enumerate(cols):
        vals = [100 * (data["categories"][g]["mean"][c] or np.nan) for g in groups]
        ax.bar(x + (i - (len(cols) - 1) / 2) * width, vals, width, label=c, color=colors[c],
               hatch="//" if c == data["baseline"] else None, edgecolor="white", linewidth=0.5)
    ax.set_xticks(x, [f"{g}\n({len(data['categories'][g]['tasks'])})" for g in groups])
    ax.set_ylabel("mean main score x100")
    ax.set_title("Category average by design (number of tasks)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, ncols=min(len(cols), 4), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_differences(data: dict, path: Path) -> Path:
    """Per task: metric(design) - metric(reference) with the bootstrap CI; filled marker = significant after Holm."""
    from matplotlib.figure import Figure

    ref, alpha = data["reference"], data["settings"]["alpha"]
    others = [d for d in data["tested"] if d != ref]
    tasks = list(data["tasks"])
    colors = _colors(data["designs"] + ([data["baseline"]] if data["baseline"] else []), data["baseline"])
    fig = Figure(figsize=(8.0, 1.4 + 0.28 * len(tasks) * max(1.0, len(others) / 2.5)), dpi=110)
    ax = fig.add_subplot()
    step = 0.8 / max(1, len(others))
    for i, d in enumerate(others):
        labelled = False
        for j, t in enumerate(tasks):
            r = _oriented(data["paired_tests"], "task", ref, d, t, PairedResult)
            if r is None:
                continue
            y = j + (i - (len(others) - 1) / 2) * step
            sig = significance(r, alpha) != 0
            ax.errorbar(100 * r.diff, y, xerr=[[100 * (r.diff - r.ci_low)], [100 * (r.ci_high - r.diff)]],
                        fmt="o", color=colors[d], mfc=colors[d] if sig else "white", ms=5, capsize=2, lw=1,
                        label=None if labelled else d)
            labelled = True
    types = [data["tasks"][t]["type"] for t in tasks]
    starts = [j for j in range(len(tasks)) if j == 0 or types[j] != types[j - 1]]
    for k, j in enumerate(starts):  # shade every other category
        if k % 2:
            ax.axhspan(j - 0.5, (starts[k + 1] if k + 1 < len(starts) else len(tasks)) - 0.5, color="0.94", zorder=0)
    ax.set_ylim(len(tasks) - 0.5, -0.5)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(range(len(tasks)), [f"{t} ({data['tasks'][t]['type']})" for t in tasks], fontsize=8)
    ax.set_xlabel(f"difference to {ref} (x100), {int(100 * data['settings']['confidence'])}% bootstrap CI; "
                  "filled = significant (Holm)")
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(3, len(others)),
                  frameon=False)
    else:
        ax.text(0.5, 0.5, "no per-dataset tests (no per-item scores)", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    fig.savefig(path)
    return path


# ---------------------------------------------------------------- rendering: one block list -> Markdown and HTML

class _Doc:
    def __init__(self):
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", (level, text)))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], numeric: bool = True):
        """numeric: right-align every column but the first."""
        self.blocks.append(("table", (header, rows, numeric)))

    def img(self, path: Path, alt: str):
        self.blocks.append(("img", (path, alt)))

    def code(self, text: str, lang: str = ""):
        self.blocks.append(("code", (text, lang)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in v))
            elif kind == "table":
                esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                header, rows, numeric = v
                out.append("\n".join(["| " + " | ".join(map(esc, header)) + " |",
                                      "|" + "|".join("---:" if i and numeric else "---" for i in range(len(header)))
                                      + "|"]
                                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]))
            elif kind == "img":
                out.append(f"![{v[1]}]({v[0].name})")
            elif kind == "code":
                out.append(f"```{v[1]}\n{v[0].rstrip()}\n```")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        def inline(s):
            s = html.escape(str(s))
            s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
            return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{inline(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{inline(v)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in v) + "</ul>")
            elif kind == "table":
                header, rows, numeric = v
                head = "".join(f"<th>{inline(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<div class=\"scroll\"><table class=\"{'num' if numeric else 'text'}\"><thead><tr>{head}"
                            f"</tr></thead><tbody>{cells}</tbody></table></div>")
            elif kind == "img":
                b64 = base64.b64encode(v[0].read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(v[1])}" src="data:image/png;base64,{b64}"></figure>')
            elif kind == "code":
                body.append(f"<pre><code>{html.escape(v[0])}</code></pre>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


_CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:1em 0;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}th{background:#f3f4f6}
table.num td,table.num th{text-align:right;white-space:nowrap}
table.num td:first-child,table.num th:first-child{text-align:left}.scroll{overflow-x:auto}
tr:nth-child(even) td{background:#fafafa}
img{max-width:100%}pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.82em}
code{font-family:ui-monospace,Menlo,Consolas,monospace}p,li{max-width:80em}"""


# ---------------------------------------------------------------- the report

def _f(x: float | None, sign: bool = False) -> str:
    return "—" if x is None or not np.isfinite(x) else (f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}")


def _p(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2g}" if x >= 0.001 else f"{x:.1e}")


def _mark(sig: int, r: PairedResult | WilcoxonResult | None = None, alpha: float = 0.05) -> str:
    """▲/▼ significant after Holm; ° (with r) significant before Holm only."""
    if sig:
        return {1: " " + UP, -1: " " + DOWN}[sig]
    return " " + RAW if r is not None and r.p_value is not None and r.p_value < alpha else ""


def _bold_best(values: list[float | None], cells: list[str]) -> list[str]:
    finite = [v for v in values if v is not None]
    best = max(finite) if finite else None
    return [f"**{c}**" if v is not None and v == best else c for v, c in zip(values, cells)]


def render(data: dict, out: Path, plots: dict[str, Path]) -> _Doc:
    ref, alpha, cols = data["reference"], data["settings"]["alpha"], data["designs"] + (
        [data["baseline"]] if data["baseline"] else [])
    label = lambda c: f"{c} (untrained)" if c == data["baseline"] else c  # noqa: E731
    n_tests, n_wil = len(data["paired_tests"]), sum(1 for w in data["wilcoxon"] if w["reachable"])
    doc = _Doc()
    doc.h(1, f"Experiment report: {data['experiment']}")
    doc.p(f"{len(data['designs'])} designs, {len(data['tasks'])} tasks; generated {data['generated']} from "
          f"`{data['folder']}`. Scores are main scores x100 (MTEB convention).")

    designs_cfg = design_table(data["config"])
    if designs_cfg:
        cfg = data["config"]
        default_seed = (cfg.get("seeds") or [cfg.get("seed", "")])[0]

        def row(d):
            c = designs_cfg.get(d, {})
            seed = c.get("seed") if c.get("seed") is not None else default_seed
            return [d, str(c.get("pooling", "")), str(c.get("attention", "")),
                    json.dumps(c.get("pooling_kwargs") or {}), str(seed)]
        doc.h(2, "Designs")
        doc.table(["design", "pooling", "attention", "pooling kwargs", "seed"], [row(d) for d in data["designs"]],
                  numeric=False)

    training = data.get("training") or {}
    if training:
        doc.h(2, "Training")
        rows = []
        for c in cols:
            t = training.get(c, {})
            steps = f"{t['steps']} / {t['max_steps']}" if "steps" in t else "untrained"
            if "steps" in t and t["steps"] < t["max_steps"]:
                steps += " (stopped early)"
            mins = lambda k: f"{t[k] / 60:.1f}" if t.get(k) is not None else "—"  # noqa: E731
            loss = (f"{t['loss_first']:.3f} → {t['loss_last']:.3f}" if "loss_first" in t else "—")
            rows.append([label(c), steps, loss, mins("elapsed_s"), mins("eval_seconds")])
        doc.table(["design", "steps", "loss (first 5 → last 5 steps)", "training (min)", "evaluation (min)"], rows)
        total = sum((t.get("train_seconds") or 0) + (t.get("eval_seconds") or 0) for t in training.values())
        if total:
            doc.p(f"Training and evaluation took {total / 60:.1f} min in all (runner's wall time, this folder's "
                  f"runs; a resumed run counts only its last invocation).")

    doc.h(2, "Scores per task")
    doc.p(f"Bold: best in the row. {UP}/{DOWN}: significantly better/worse than the reference **{ref}** on that "
          f"task (paired permutation test on per-item scores, Holm over all {n_tests} per-dataset comparisons, "
          f"alpha={alpha:g}).")
    rows = []
    for t, info in data["tasks"].items():
        vals = [info["scores"][c] for c in cols]
        cells = []
        for c, v in zip(cols, vals):
            r = _oriented(data["paired_tests"], "task", ref, c, t, PairedResult) if c != ref else None
            cells.append(_f(v) + (_mark(significance(r, alpha)) if r else ""))
        rows.append([t, info["type"]] + _bold_best(vals, cells))
    secs = [sum(info["seconds"].get(c) or 0 for info in data["tasks"].values()) for c in cols]
    rows.append(["evaluation time (min)", ""] + [f"{s / 60:.1f}" for s in secs])
    doc.table(["task", "type"] + [label(c) for c in cols], rows)

    doc.h(2, "Category averages")
    rows = []
    for g, info in data["categories"].items():
        vals = [info["mean"][c] for c in cols]
        rows.append([g, str(len(info["tasks"]))] + _bold_best(vals, [_f(v) for v in vals]))
    doc.table(["category", "tasks"] + [label(c) for c in cols], rows)
    doc.img(plots["categories"], "category average by design")

    if data.get("replicates"):
        doc.h(2, "Mean over seeds")
        doc.p("Each design was trained once per seed; cell = mean ± standard deviation over seeds of the category "
              "average (x100). The tests above compare single runs (design × seed).")
        names = list(data["replicates"])
        rows = [[g] + [f"{_f(r['mean'][g])} ± {_f(r['sd'][g])}" if r["mean"].get(g) is not None else "—"
                       for r in data["replicates"].values()] for g in data["categories"]]
        doc.table(["category"] + [f"{n} (n={len(data['replicates'][n]['runs'])})" for n in names], rows)

    others = [d for d in data["tested"] if d != ref]
    if others:
        doc.h(2, f"Differences against {ref}")
        doc.p(f"metric(design) - metric({ref}) x100 recomputed from per-item scores, "
              f"[{int(100 * data['settings']['confidence'])}% paired bootstrap CI], Holm-adjusted p; "
              f"{UP}/{DOWN} significant at alpha={alpha:g} after Holm, {RAW} only before it.")
        rows = []
        for t in data["tasks"]:
            row = [t]
            for d in others:
                r = _oriented(data["paired_tests"], "task", ref, d, t, PairedResult)
                row.append("—" if r is None else f"{_f(r.diff, True)} [{_f(r.ci_low, True)}, {_f(r.ci_high, True)}] "
                                                 f"p={_p(r.p_holm)}{_mark(significance(r, alpha), r, alpha)}")
            rows.append(row)
        doc.table(["task"] + others, rows)
        doc.img(plots["differences"], f"per-task differences against {ref}")

    groups = list(data["categories"])
    doc.h(2, "Wilcoxon signed-rank test across datasets")
    doc.p(f"The paper's test: for each pair, the per-dataset main scores of a category; cell = mean difference "
          f"(row's first design minus second) x100, Holm-adjusted p over the {n_wil} tests that can reach "
          f"alpha={alpha:g}; {UP}/{DOWN} significant after Holm, {RAW} only before it. With n <= 5 datasets the "
          f"exact two-sided test cannot reach p<0.05 (minimum p = 2/2^n).")
    rows, footnotes = [], []

    def footnote(text):
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    for a, b in itertools.combinations(data["tested"], 2):
        row = [f"{b} - {a}"]
        for g in groups:
            w = _oriented(data["wilcoxon"], "category", a, b, g, WilcoxonResult)
            if w is None:
                row.append("—")
            elif w.p_value is None or not w.reachable:
                row.append(f"{_f(w.mean_diff, True)} {footnote(w.note)}")
            else:
                n_note = "" if w.n == len(data["categories"][g]["tasks"]) else f"n={w.n}, "
                row.append(f"{_f(w.mean_diff, True)} ({n_note}p={_p(w.p_value)}, Holm {_p(w.p_holm)})"
                           f"{_mark(significance(w, alpha), w, alpha)}")
        rows.append(row)
    doc.table(["pair"] + [f"{g} (n={len(data['categories'][g]['tasks'])})" for g in groups], rows)
    doc.ul([f"[{i + 1}] {n}" for i, n in enumerate(footnotes)])

    doc.h(2, "Win / tie / loss")
    doc.p(f"Row design against column design over datasets: wins/ties/losses = significantly better / not "
          f"significant / significantly worse (per-dataset tests, Holm). {UP}/{DOWN}: the row is significantly "
          f"better/worse over {ALL} by the Wilcoxon test (Holm).")
    rows = []
    for r_ in data["tested"]:
        row = [r_]
        for c in data["tested"]:
            if c == r_:
                row.append("·")
                continue
            w, t, l_ = data["win_tie_loss"][r_][c]
            wil = _oriented(data["wilcoxon"], "category", c, r_, ALL, WilcoxonResult)
            row.append(f"{w}/{t}/{l_}" + (_mark(significance(wil, alpha)) if wil else ""))
        rows.append(row)
    doc.table(["row vs column"] + data["tested"], rows)

    doc.h(2, "Method")
    doc.p(f"Per-dataset tests compare two designs on the same items: the effect is the task metric of B minus A "
          f"(Spearman for STS, average precision for pair classification, mean nDCG@10 for retrieval and "
          f"reranking, accuracy for classification, mean V-measure over runs for clustering), recomputed from the "
          f"per-item scores. p-values come from a paired permutation test (A's and B's predictions swapped per item, "
          f"{data['settings']['n_resamples']} permutations; exact enumeration when all swap patterns fit, else the "
          f"normal tail of the permutation null), CIs from a paired percentile bootstrap over items "
          f"({data['settings']['n_resamples']} resamples, seed {data['settings']['seed']}). Holm-Bonferroni "
          f"controls the family-wise error rate within each family (per-dataset tests; Wilcoxon tests).")
    doc.h(2, "Notes")
    doc.ul(data["notes"] or ["none"])

    doc.h(2, "Configuration")
    doc.code(yaml.safe_dump(data["config"], sort_keys=False) if data["config"] else "(experiment.yaml missing)",
             "yaml")
    doc.h(2, "Environment")
    env = data["environment"]
    if env:
        rows = [[k, ", ".join(v) if isinstance(v, list) else str(v)] for k, v in env.items() if k != "packages"]
        rows += [[k, str(v)] for k, v in (env.get("packages") or {}).items()]
        doc.table(["", "value"], [[k, v or "none"] for k, v in rows], numeric=False)
    else:
        doc.p("not recorded (environment.json missing)")
    return doc


def write_report(folder: str | Path, output: str | Path | None = None, progress: bool = True,
                 **overrides) -> dict[str, Path]:
    """Analyse an experiment folder and write report.{md,html,json} and the PNGs (into `output`, default the
    folder). `overrides`: ReportSettings fields (None = keep experiment.yaml's value)."""
    exp = load_experiment(folder)
    data = analyse(exp, settings_for(exp, **overrides), progress)
    out = Path(output or folder)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"categories": plot_categories(data, out / "category_scores.png"),
             "differences": plot_differences(data, out / "task_differences.png")}
    doc = render(data, out, plots)
    paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "report.json", **plots}
    paths["md"].write_text(doc.markdown(), encoding="utf-8")
    paths["html"].write_text(doc.html(f"Experiment report: {data['experiment']}"), encoding="utf-8")
    paths["json"].write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    return paths
