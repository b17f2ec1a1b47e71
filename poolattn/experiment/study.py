"""A budget study: which lr, how many steps and how many seeds an experiment needs to tell its designs apart.
The tool measures this itself (its output is data): `poolattn study configs/study_budget.yaml`.

The experiment's designs train with a constant lr after warmup, once per (lr, seed), with a model snapshot at every
budget: with a constant lr the snapshot at step k IS the k-step run (same data order, same lr at every step;
tests/test_study.py checks it), so one run serves every budget, and a run may be extended to more steps. Each (lr, budget) becomes an
ordinary experiment folder, `lr<lr>-steps<k>/` (experiment.yaml with that lr and max_steps; runs/<design>[-s<seed>]/
eval), and poolattn.report's seed-aware analysis (effect, CI, seed SD, item SE, minimum detectable effect) applies
to it unchanged. Phases:
  1. sweep: every lr at the first seed, trained to and evaluated at `sweep_budgets` (`sweep/lr<lr>-steps<k>/`);
  2. pick: the lr with the best mean main score (over designs and tasks) at the largest sweep budget;
  3. seeds: every seed at the picked lr to the largest budget, evaluated at every budget (the first seed's runs
     are the sweep's, extended);
  4. a report per folder, and <name>.json / <name>.md (the config's name): the sweep table, and per budget and category each design's
     mean +- seed SD and, per design pair, the difference, its seed SD, item SE and minimum detectable effect.
Resumable: a finished training or snapshot evaluation is never redone, and the picked lr stays picked, so designs
added to the config later (levers measured against the same reference runs) cost only their own runs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..evaluation.summary import read_summary
from ..fileio import write_json, write_text
from .config import ExperimentConfig, changed_fields, train_config_for
from .layout import ExperimentLayout
from .runner import evaluate_design


class StudySettings(BaseModel):
    """The `study:` section of a study config (the rest of the file is an experiment config)."""
    model_config = ConfigDict(extra="forbid")
    lrs: list[float] = Field(min_length=1)
    budgets: list[int] = Field(min_length=1)  # training steps at which every run is evaluated
    seeds: list[int] = Field(min_length=1)  # the first is the sweep's seed
    sweep_budgets: list[int] | None = None  # budgets evaluated for every lr (default: all)
    warmup_steps: int = Field(5, ge=0)

    @model_validator(mode="after")
    def _check(self):
        self.budgets = sorted(set(self.budgets))
        if self.budgets[0] <= self.warmup_steps:
            raise ValueError(f"budgets must all exceed warmup_steps={self.warmup_steps}: {self.budgets}")
        if self.sweep_budgets is not None and not set(self.sweep_budgets) <= set(self.budgets):
            raise ValueError(f"sweep_budgets {self.sweep_budgets} must be among budgets {self.budgets}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct: {self.seeds}")
        return self


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[ExperimentConfig, StudySettings]:
    from ..configfile import read_config
    from ..training import apply_overrides

    raw = apply_overrides(read_config(path), overrides or [])
    if "study" not in raw:
        raise ValueError(f"{path}: a study config needs a `study:` section (lrs, budgets, seeds); "
                         f"see configs/study_budget.yaml")
    study = StudySettings.model_validate(raw.pop("study"))
    config = ExperimentConfig.model_validate(raw)
    for d in config.designs:
        axes = {"lr", "max_steps", "schedule", "warmup_steps", "max_time_minutes"} & set(d.train)
        if axes:
            raise ValueError(f"{path}: design {d.name!r} sets {sorted(axes)} in its train: the study sets those "
                             f"for every design (study.lrs, study.budgets, study.warmup_steps)")
    # A study's folders evaluate no baseline or peers (folder_config): its reference must be one of its designs.
    config.check_reference(config.designs)
    return config, study


def _lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def folder_config(config: ExperimentConfig, study: StudySettings, lr: float, steps: int, seeds: list[int],
                  folder: Path) -> ExperimentConfig:
    """The experiment a (lr, budget) folder stands for: every design at this lr for `steps` steps, these seeds."""
    train = {**config.train, "lr": lr, "max_steps": steps, "schedule": "constant",
             "warmup_steps": study.warmup_steps, "max_time_minutes": None}
    return config.model_copy(update={"output_dir": str(folder), "train": train, "seeds": seeds, "baseline": None,
                                     "peers": [], "budget_minutes": None,
                                     "name": f"{config.name} lr {_lr(lr)} {steps} steps"})


def _train_run(config: ExperimentConfig, study: StudySettings, lr: float, seed: int, design, out: Path,
               steps: int) -> Path:
    """Train one (design, lr, seed) to `steps` with a snapshot at every budget on the way; returns the run folder.
    A run trained to fewer steps before is extended (a constant-lr run may be: tests/test_study.py)."""
    from ..training import train

    run = out / "train" / f"lr{_lr(lr)}" / f"{design.name}-s{seed}"
    cfg = folder_config(config, study, lr, steps, [seed], run)
    tc = train_config_for(cfg, design.model_copy(update={"seed": seed}), run)
    train(tc.model_copy(update={"snapshot_steps": [k for k in study.budgets if k <= steps], "output_dir": str(run)}))
    return run


def _write_folder(cfg: ExperimentConfig) -> None:
    import yaml

    path = ExperimentLayout(cfg.output_dir).config
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def _evaluate_snapshot(cfg: ExperimentConfig, run: Path, steps: int, name: str, console) -> None:
    """Evaluate the run's snapshot at `steps` as row `name` of the experiment folder cfg.output_dir (unless done)."""
    from ..model import EmbeddingModel

    layout = ExperimentLayout(cfg.output_dir)
    if layout.done(name):
        return
    eval_dir = layout.eval(name)
    console.print(f"[dim]evaluate {run.name} at {steps} steps -> {eval_dir}[/dim]")
    model = EmbeddingModel.from_pretrained(run / "snapshots" / f"step-{steps:06d}", inference=True,
                                           device=cfg.device, fuse_lora=cfg.fuse_lora)
    evaluate_design(model, cfg, eval_dir)


def _mean_score(folder: Path) -> float:
    """Mean main score over every task of every run in an experiment folder."""
    layout = ExperimentLayout(folder)
    scores = [v.main_score for name in layout.evaluated() for v in read_summary(layout.summary(name)).values()]
    return float(np.mean(scores)) if scores else float("nan")


def run_study(config: ExperimentConfig, study: StudySettings, console=None) -> Path:
    from rich.console import Console

    from ..report import write_report

    console = console or Console(stderr=True)
    config.check_data()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    designs = config.designs
    first = study.seeds[0]
    sweep_budgets = study.sweep_budgets or study.budgets
    runs: dict[tuple[float, int, str], Path] = {}

    # 1. sweep: every lr at the first seed (once decided, the pick stays: designs added to a study later, e.g.
    #    levers measured against the same references, train at the picked lr only and reuse every finished run)
    decided = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").exists() else None
    for lr in ([decided["picked_lr"]] if decided else study.lrs):
        for design in designs:
            console.rule(f"sweep: {design.name}, lr {_lr(lr)}, seed {first}")
            runs[lr, first, design.name] = _train_run(config, study, lr, first, design, out, max(sweep_budgets))
        for k in sweep_budgets:
            cfg = folder_config(config, study, lr, k, [first], out / "sweep" / f"lr{_lr(lr)}-steps{k}")
            _write_folder(cfg)
            for design in designs:
                _evaluate_snapshot(cfg, runs[lr, first, design.name], k, design.name, console)
    # 2. pick the lr
    last = max(sweep_budgets)
    if decided:
        picked = decided["picked_lr"]
    else:
        means = {_lr(lr): _mean_score(out / "sweep" / f"lr{_lr(lr)}-steps{last}") for lr in study.lrs}
        picked = max(study.lrs, key=lambda lr: means[_lr(lr)])
        write_json(out / "sweep.json", {"criterion": f"mean main score over designs and tasks at {last} steps",
                                        "designs": [d.name for d in designs], "mean_score": means,
                                        "picked_lr": picked})
        console.print(f"picked lr {_lr(picked)} (mean score at {last} steps: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in means.items()) + ")")
    # 3. seeds at the picked lr, every budget
    for seed in study.seeds:
        for design in designs:
            console.rule(f"seeds: {design.name}, lr {_lr(picked)}, seed {seed}")
            runs[picked, seed, design.name] = _train_run(config, study, picked, seed, design, out, study.budgets[-1])
    folders = []
    for k in study.budgets:
        cfg = folder_config(config, study, picked, k, study.seeds, out / f"lr{_lr(picked)}-steps{k}")
        _write_folder(cfg)
        folders.append(Path(cfg.output_dir))
        layout, sweep = ExperimentLayout(cfg.output_dir), ExperimentLayout(out / "sweep" / f"lr{_lr(picked)}-steps{k}")
        for d in cfg.all_designs():
            seed, base = cfg.seed_for(d), d.replicate_of or d.name
            if seed == first and sweep.done(base) and not layout.eval(d.name).exists():
                done = sweep.eval(base)  # the same model, already evaluated in the sweep (at each width too)
                for src in [done] + [sweep.at_width(done, n) for n in cfg.eval.dimensions or []]:
                    if src.exists():
                        shutil.copytree(src, layout.run(d.name) / src.name)
            _evaluate_snapshot(cfg, runs[picked, seed, base], k, d.name, console)
    # 4. reports and the study table
    for folder in folders + sorted((out / "sweep").glob("lr*-steps*")):
        write_report(folder, progress=False)  # again each time: designs may have been added
    data = summarise(out, study, picked, runs, config)
    write_json(out / f"{config.name}.json", data)  # named after the config: a lever study on the same folder
    write_text(out / f"{config.name}.md", render_study(data))  # keeps the budget study's table
    return out


ALL = "All tasks"


def _category_scores(summary: Path) -> dict[str, float]:
    """Category average of main scores (x100) and over all tasks (the report's `All tasks`), from one run's
    eval/summary.json."""
    cats: dict[str, list[float]] = {}
    for v in read_summary(summary).values():
        cats.setdefault(v.type, []).append(100 * v.main_score)
        cats.setdefault(ALL, []).append(100 * v.main_score)
    return {c: float(np.mean(s)) for c, s in cats.items()}


def _step_seconds(run: Path) -> float:
    from ..training.runfolder import metric_rows

    t = [r["elapsed_s"] for r in metric_rows(run)]  # contrastive training's steps
    return float(np.median(np.diff(t))) if len(t) > 2 else float("nan")


def _changes(design, base) -> str:
    """What a lever design changes against the design it is a lever of, in config terms (dotted field: new value)."""
    keys = {"pooling", "attention", "mask_instruction", "echo", "pooling_kwargs", "train"}
    old, new = base.model_dump(include=keys), design.model_dump(include=keys)

    def value(field: str):
        v = new
        for part in field.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v

    return "; ".join(f"{f}: {json.dumps(value(f))}" for f in changed_fields(old, new)) or "nothing"


def lever_rows(config: ExperimentConfig, pairs: list[dict], step_s: dict[str, list[float]]) -> list[dict]:
    """For every design with `lever_of`: its seed-level effect against that design per category (lever - base,
    CI and Holm p from the report), and the median seconds per step of both."""
    by_name = {d.name: d for d in config.designs}
    rows = []
    for d in config.designs:
        if d.lever_of is None:
            continue
        for pair in pairs:
            if {pair["a"], pair["b"]} != {d.name, d.lever_of}:
                continue
            forward = pair["b"] == d.name  # the report's diff is b - a
            effect, lo, hi = ((pair["diff"], pair["ci_low"], pair["ci_high"]) if forward
                              else (-pair["diff"], -pair["ci_high"], -pair["ci_low"]))
            rows.append({"lever": d.name, "base": d.lever_of, "changes": _changes(d, by_name[d.lever_of]),
                         "category": pair["category"], "effect": effect, "ci_low": lo, "ci_high": hi,
                         "p_holm": pair["p_holm"], "seed_sd": pair["seed_sd"], "n_seeds": pair.get("n_seeds"),
                         "step_s": float(np.median(step_s.get(d.name) or [np.nan])),
                         "base_step_s": float(np.median(step_s.get(d.lever_of) or [np.nan]))})
    return rows


def summarise(out: Path, study: StudySettings, picked: float, runs: dict,
              config: ExperimentConfig | None = None) -> dict[str, Any]:
    """study.json: the sweep (first seed), and per budget at the picked lr the seed statistics (and the lever
    table when designs name what they are a lever of)."""
    sweep = []
    for folder in sorted((out / "sweep").glob("lr*-steps*")):
        layout = ExperimentLayout(folder)
        for name in layout.evaluated():
            sweep.append({"folder": folder.name, "design": name, **_category_scores(layout.summary(name))})
    seconds = {key: _step_seconds(run) for key, run in runs.items()}  # each run's metrics.jsonl read once
    picked_step_s: dict[str, list[float]] = {}
    for (lr, _, name), s in seconds.items():
        if lr == picked:
            picked_step_s.setdefault(name, []).append(s)
    budgets = []
    for k in study.budgets:
        folder = out / f"lr{_lr(picked)}-steps{k}"
        per_design: dict[str, dict[str, list[float]]] = {}
        layout = ExperimentLayout(folder)
        for run in layout.evaluated():
            for c, v in _category_scores(layout.summary(run)).items():
                per_design.setdefault(run.rsplit("-s", 1)[0], {}).setdefault(c, []).append(v)
        report = json.loads(layout.report("json").read_text())
        pairs = [{k2: r.get(k2) for k2 in ("a", "b", "category", "diff", "ci_low", "ci_high", "seed_sd", "item_se",
                                           "mde", "p_value", "p_holm", "n_seeds")}
                 for r in report["seed_level"]["categories"]]
        budgets.append({"steps": k, "folder": folder.name, "designs": {
            d: {c: {"mean": float(np.mean(v)), "seed_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                    "n": len(v)} for c, v in cats.items()} for d, cats in per_design.items()}, "pairs": pairs,
            "levers": lever_rows(config, pairs, picked_step_s) if config is not None else []})
    step_s = {f"{name} lr {_lr(lr)} s{seed}": s for (lr, seed, name), s in seconds.items()}
    return {"name": config.name if config is not None else "study", "lrs": study.lrs, "picked_lr": picked,
            "budgets_steps": study.budgets, "seeds": study.seeds, "sweep": sweep, "budgets": budgets,
            "seconds_per_step": step_s}


def _f(x: float | None, scale: float = 1.0) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{scale * x:.2f}"


def _p(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def render_study(data: dict) -> str:
    lines = [f"# Study: {data.get('name', 'study')}", "",
             f"Constant lr after warmup; seeds {data['seeds']}; picked lr **{_lr(data['picked_lr'])}** "
             f"(best mean main score in the sweep).", "", "## lr sweep (first seed; category averages x100)", ""]
    cats = sorted({c for r in data["sweep"] for c in r if c not in ("folder", "design")} - {ALL}) + [ALL]
    lines += ["| folder | design | " + " | ".join(cats) + " |", "|---|---|" + "---:|" * len(cats)]
    lines += [f"| {r['folder']} | {r['design']} | " + " | ".join(_f(r.get(c)) for c in cats) + " |"
              for r in data["sweep"]]
    lines += ["", "## Seed SD and minimum detectable effect per budget (picked lr)", "",
              "Per design: mean +- SD over seeds of the category average (x100). Per design pair: the seed-averaged "
              "difference, the SD over seeds of the paired difference, the item SE, and the minimum detectable "
              "effect at 80% power with these seeds (points).", ""]
    lines += ["| steps | category | " + " | ".join(sorted(data["budgets"][0]["designs"])) +
              " | pair | diff | seed SD of diff | item SE | MDE |",
              "|---:|---|" + "---:|" * len(data["budgets"][0]["designs"]) + "---|---:|---:|---:|---:|"]
    for b in data["budgets"]:
        for pair in b["pairs"]:
            c = pair["category"]
            cells = [f"{v[c]['mean']:.2f} +- {_f(v[c]['seed_sd'])}" if c in v else "-"
                     for _, v in sorted(b["designs"].items())]
            lines.append(f"| {b['steps']} | {c} | " + " | ".join(cells) + f" | {pair['b']} - {pair['a']} | "
                         f"{_f(pair['diff'], 100)} | {_f(pair['seed_sd'], 100)} | {_f(pair['item_se'], 100)} | "
                         f"{_f(pair['mde'], 100)} |")
    levers = [(b["steps"], r) for b in data["budgets"] for r in b.get("levers", [])]
    if levers:
        lines += ["", "## Levers", "",
                  "Each lever design changes one thing of the design it is a lever of; same data, seeds and "
                  "evaluation. Effect: lever - base, mean over seeds of the paired difference of the category "
                  "average (x100), with the 95% CI and Holm-adjusted p of the seed-level test (seed and item "
                  "variance both in it). Seconds per step: median over the runs of the lever / of its base.", "",
                  "| steps | lever | changes | vs | category | effect | 95% CI | p (Holm) | seeds | s/step |",
                  "|---:|---|---|---|---|---:|---|---:|---:|---|"]
        lines += [f"| {k} | {r['lever']} | {r['changes']} | {r['base']} | {r['category']} | {_f(r['effect'], 100)} | "
                  f"[{_f(r['ci_low'], 100)}, {_f(r['ci_high'], 100)}] | "
                  f"{_p(r['p_holm'])} | {r['n_seeds']} | "
                  f"{_f(r['step_s'], 1)} / {_f(r['base_step_s'], 1)} |" for k, r in levers]
    lines += ["", "Median seconds per training step: " + ", ".join(
        f"{k} {v:.1f}" for k, v in sorted(data["seconds_per_step"].items())), ""]
    return "\n".join(lines)
