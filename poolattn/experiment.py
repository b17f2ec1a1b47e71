"""The controlled experiment: every design trained on the same data, order and seed, then evaluated on the same
tasks, with the untrained backbone and any peer models (poolattn.references) as reference rows; then statistics
and a report.

One folder holds everything and is the unit of resumption: a design whose `runs/<name>/eval/summary.json` exists
is done; one with a checkpoint resumes from it; `experiment.yaml` pins the config the folder was started with.

    EXPERIMENT/experiment.yaml   config as run          EXPERIMENT/environment.json
    EXPERIMENT/runs/<design>/train/   trainer's run folder (checkpoints, metrics.jsonl, final model)
    EXPERIMENT/runs/<design>/eval/    evaluation results (summary.json, <task>.json, <task>.items.json)
    EXPERIMENT/runs/<baseline>/eval/, runs/peer-<slug>/eval/   reference rows: evaluated, never trained
    EXPERIMENT/report.{md,html,json}, *.png
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .designs import MEAN_BASELINES, PAPER_DESIGNS, Design, named_design  # the registry (once defined here)
from .fileio import write_json, write_text
from .model import ModelConfig
from .references import PEER_PREFIX, Peer, peer_rows

log = logging.getLogger(__name__)

BASELINE = "baseline"


class ReportSettings(BaseModel):
    """`report:` section of experiment.yaml (read by poolattn.report); command-line options override it."""
    model_config = ConfigDict(extra="forbid")
    reference: str | None = None  # design the per-task differences are drawn against; default: the first design
    n_resamples: int = Field(1000, ge=50)  # permutations and bootstrap resamples per per-dataset test
    confidence: float = Field(0.95, gt=0, lt=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    seed: int = 0
    baseline_in_tests: bool = False  # also test every design against the untrained baseline


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: str | list[str] = "lite"
    data_dir: str | None = None  # the data pack; None: $POOLATTN_DATA, else ../shared/data (poolattn.datadir)
    batch_size: int = 32
    instructions: dict[str, str] | None = None
    languages: list[str] | None = ["eng"]  # subsets of multilingual hub tasks (ISO 639-3); None: every subset
    all_splits: bool = False  # score every split of each task; default: the main split only (the leaderboard's)
    dedup: bool = True  # encode each distinct text once per task and side (exact); False: as mteb passes them


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    base: ModelConfig = Field(default_factory=ModelConfig)
    designs: list[Design] = Field(default_factory=lambda: list(PAPER_DESIGNS))  # a design or a named design
    include_mean_baselines: bool = False
    baseline: Design | None = Design(name=BASELINE, pooling="mean", attention="causal")  # untrained reference
    # Established models evaluated as they are beside the designs (reference rows runs/peer-<slug>, not tested):
    # names or paths poolattn.evaluation.load_model takes, e.g. all-MiniLM-L6-v2.
    peers: list[str] = []
    train: dict[str, Any] = {}  # TrainConfig fields, shared by every design (model and output_dir are set here)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    seed: int = 42
    # Replicates: with two or more seeds every design is trained once per seed (data order and initialisation of
    # LoRA and pooler change with it) as `<design>-s<seed>`; the report adds the mean and spread over seeds.
    seeds: list[int] | None = None
    device: str = "auto"  # where designs train and are evaluated: auto, cpu, cuda:N, mps (may change on resume)
    # Total minutes for the run on this machine: steps, lr, warmup and number of seeds come from the recipe table
    # that fits (poolattn.budget); None: train and seeds as configured (the estimate is printed either way).
    budget_minutes: float | None = Field(None, gt=0)
    prefix_reuse: bool = Field(
        True, description="in training and evaluation, run the instruction all texts of a batch start with once per "
        "batch where attention is causal (exact up to rounding: may change on resume); false: every text whole")
    report: ReportSettings = Field(default_factory=ReportSettings)

    @field_validator("designs", mode="before")
    @classmethod
    def _named(cls, v: Any) -> Any:
        """A design given by name is the named design; a mapping with only `name` (plus overrides) extends it."""
        if not isinstance(v, list):
            return v
        out = []
        for d in v:
            if isinstance(d, str):
                d = named_design(d)
            elif isinstance(d, dict) and "pooling" not in d and "name" in d:
                base = named_design(d["name"]).model_dump()
                d = {**base, **d, "pooling_kwargs": {**base["pooling_kwargs"], **d.get("pooling_kwargs", {})}}
            out.append(d)
        return out

    @model_validator(mode="after")
    def _unique_names(self):
        names = [d.name for d in self.all_designs()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"design names must be unique; repeated: {dup}")
        taken = sorted(n for n in names if n.startswith(PEER_PREFIX))
        if taken:
            raise ValueError(f"design names may not start with {PEER_PREFIX!r} (peer rows' folders): {taken}")
        peers = [p.name for p in self.peer_rows()]
        if len(set(peers)) < len(peers):
            raise ValueError(f"peers must name different models (rows {peers}): {self.peers}")
        configured = [d.name for d in self.designs]
        for d in self.designs:
            if d.lever_of is not None and (d.lever_of not in configured or d.lever_of == d.name):
                raise ValueError(f"design {d.name!r}: lever_of {d.lever_of!r} must name another configured design "
                                 f"({', '.join(n for n in configured if n != d.name)})")
        return self

    @model_validator(mode="after")
    def _reference(self):
        # Checked when the config loads, not when the report is written after hours of training.
        self.check_reference(self.base_designs() + self.reference_rows())
        return self

    def check_reference(self, rows: list[Design | Peer]) -> None:
        """report.reference (when set) must name one of `rows`, the designs and reference rows it is drawn from."""
        names = [r.name for r in rows]
        if self.report.reference is not None and self.report.reference not in names:
            raise ValueError(f"report.reference {self.report.reference!r} is not a design or reference row of this "
                             f"config; valid: {names} (or leave it unset: the first design)")

    @model_validator(mode="after")
    def _seeds(self):
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        return self

    def base_designs(self) -> list[Design]:
        """The configured designs and the mean baselines when included, once each (no per-seed replicates)."""
        return self.designs + (MEAN_BASELINES if self.include_mean_baselines else [])

    def all_designs(self) -> list[Design]:
        """The configured designs (and mean baselines), once per seed when there are several seeds."""
        designs = self.base_designs()
        if not self.seeds or len(self.seeds) == 1:
            return designs
        return [d.model_copy(update={"name": f"{d.name}-s{s}", "seed": s, "replicate_of": d.name})
                for d in designs for s in self.seeds]

    def peer_rows(self) -> list[Peer]:
        return peer_rows(self.peers)

    def reference_rows(self) -> list[Design | Peer]:
        """The rows evaluated without training: the baseline first, then the peers."""
        return ([self.baseline] if self.baseline else []) + self.peer_rows()

    def steps(self) -> list[Design | Peer]:
        """Everything the experiment evaluates, in order: the reference rows, then every design (and replicate)."""
        return self.reference_rows() + self.all_designs()

    def check_data(self) -> None:
        """The data folders this config names exist (poolattn.datadir's rule); checked before any folder is made."""
        from .datadir import resolve_data_dir

        resolve_data_dir(self.eval.data_dir, "eval.data_dir")
        resolve_data_dir(self.train.get("data_dir"), "train.data_dir")

    def seed_for(self, design: Design) -> int:
        return design.seed if design.seed is not None else (self.seeds[0] if self.seeds else self.seed)

    def model_config_for(self, design: Design) -> ModelConfig:
        return self.base.model_copy(update={"pooling": design.pooling, "attention": design.attention,
                                            "pooling_kwargs": design.pooling_kwargs,
                                            "mask_instruction": design.mask_instruction or self.base.mask_instruction})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "ExperimentConfig":
        from .training import apply_overrides

        from .configfile import read_config

        return cls.model_validate(apply_overrides(read_config(path), overrides or []))


def write_config_once(folder: Path, config: ExperimentConfig) -> None:
    """Pin the config a folder was started with; a resumed run must not silently change the experiment."""
    path = folder / "experiment.yaml"
    dumped = config.model_dump(mode="json")
    if path.exists():
        # Validated again so fields added since the folder was started compare at their defaults.
        before = ExperimentConfig.model_validate(yaml.safe_load(path.read_text())).model_dump(mode="json")
        # Where the run lives and how it is reported may change; what it computes may not.
        # A peer may be added to a finished experiment; prefix_reuse changes speed, not results.
        keep = ("output_dir", "report", "device", "peers", "prefix_reuse")
        moved = ("eval.data_dir", "train.data_dir")  # where the data lives, not what it is
        changed = [k for k in changed_fields(before, dumped) if k.split(".")[0] not in keep and k not in moved]
        if changed:
            raise ValueError(f"{path} holds a different experiment config ({', '.join(changed[:5])} changed); "
                             f"use a new output_dir or restore it")
    write_text(path, yaml.safe_dump(dumped, sort_keys=False))


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ (dicts compared key by key, lists and values as a whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [f for k in sorted(set(old) | set(new), key=str)
                for f in changed_fields(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if old != new else []


def merge_train(shared: dict[str, Any], lever: dict[str, Any]) -> dict[str, Any]:
    """The experiment's training fields with a design's lever over them (mappings merged one level deep)."""
    out = dict(shared)
    for k, v in lever.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_config_for(config: ExperimentConfig, design: Design, run_dir: Path):
    """Every design gets the same training settings, data and seed: only the model config differs, and a lever
    design's own `train` fields."""
    from .training import TrainConfig

    raw = {**merge_train(config.train, design.train), "model": config.model_config_for(design).model_dump(),
           "output_dir": str(run_dir / "train"), "seed": config.seed_for(design)}
    raw.setdefault("data_dir", config.eval.data_dir)
    raw.setdefault("device", config.device)
    raw.setdefault("prefix_reuse", config.prefix_reuse)
    return TrainConfig.model_validate(raw)


def evaluate_design(model, config: ExperimentConfig, out: Path, cache: bool = True) -> None:
    from .evaluation import evaluate

    evaluate(model, config.eval.tasks, data_dir=config.eval.data_dir, output_dir=out,
             instructions=config.eval.instructions, batch_size=config.eval.batch_size, cache=cache,
             languages=config.eval.languages, all_splits=config.eval.all_splits, dedup=config.eval.dedup)


def _plan_budget(config: ExperimentConfig, folder: Path, console) -> ExperimentConfig:
    """Measure this machine and estimate the run (budget.json; read back on resume), applying the budget's choice.
    Measures only with one process and work left; several processes need budget.json from a one-process start."""
    from .budget import plan, print_estimate
    from .distributed import is_main, world

    planned = (folder / "budget.json").exists()
    left = any(not (folder / "runs" / d.name / "eval" / "summary.json").exists() for d in config.steps())
    if not planned and world()[1] > 1:
        if config.budget_minutes is not None:
            raise ValueError("budget_minutes needs this machine measured on one process first (start the "
                             "experiment without a launcher, stop it after the estimate, then launch)")
        return config
    if not planned and not left:
        return config
    config, record = plan(config, folder)
    if is_main():
        print_estimate(record, console)
    return config


def pending(folder: str | Path) -> list[str]:
    """The designs (and reference rows) of the experiment pinned in `folder` whose evaluation is not written yet."""
    folder = Path(folder)
    config = ExperimentConfig.model_validate(yaml.safe_load((folder / "experiment.yaml").read_text()))
    return [d.name for d in config.steps() if not (folder / "runs" / d.name / "eval" / "summary.json").exists()]


def claim(run_dir: Path) -> str | None:
    """Take the design for this job (a file created exclusively: two jobs on one folder never train the same design).
    None when taken; else who holds it. A claim of this host whose process is gone is stale and taken over."""
    import json
    import os
    import socket

    path = run_dir / "claim.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("SLURM_JOB_ID")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = {}
            if held.get("host") == me["host"] and held.get("pid") == me["pid"]:
                return None
            alive = True
            if held.get("host") == me["host"] and isinstance(held.get("pid"), int):
                try:
                    os.kill(held["pid"], 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if alive:
                return f"{held.get('host', '?')} pid {held.get('pid', '?')} (delete {path} if that job is gone)"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return None
    return f"another job ({path})"


def run_experiment(config: ExperimentConfig, progress: bool = True, cache: bool = True,
                   only: list[str] | None = None) -> Path:
    """Train and evaluate every design (skipping finished ones, resuming interrupted ones); returns the folder
    (poolattn.report.write_report turns it into the report; `poolattn experiment` does both).
    cache=False: evaluate without reading or writing the embedding cache (as `poolattn eval --no-cache`).
    only: the names of the designs this job runs (`--design`; `baseline` for the untrained row, `peers` for every
    peer, or a peer's row or model name): for a scheduler that launches designs as separate jobs on one folder; each
    design is claimed by the job that runs it.
    Under torchrun / accelerate launch one process group serves the run: every rank trains each design together and
    encodes its share of every evaluation (rank 0 scores with mteb and writes the files)."""
    from rich.console import Console

    import torch

    from .device import resolve_device
    from .distributed import broadcast, ensure_group, is_main, world
    from .model import EmbeddingModel
    from .environment import collect_environment
    from .references import check_peer, reference_model, selected
    from .training import train

    console = Console(stderr=True)
    config.check_data()
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ensure_group(resolve_device(config.device).type)
    steps = config.steps()
    if only:
        only = selected(only, config.peer_rows())
        unknown = sorted(set(only) - {d.name for d in steps})
        if unknown:
            raise ValueError(f"--design {', '.join(unknown)}: not in this experiment; its designs: "
                             f"{', '.join(d.name for d in steps)}" + (" (peers: every peer)" if config.peers else ""))
    for peer in config.peer_rows():  # a misnamed local path fails now, not after hours of training
        if (not only or peer.name in only) and not (folder / "runs" / peer.name / "eval" / "summary.json").exists():
            check_peer(peer)
    config = _plan_budget(config, folder, console)
    if is_main():  # launchers set RANK before any process group exists
        write_config_once(folder, config)
        write_json(folder / "environment.json", collect_environment())
    started = time.time()
    steps, references = config.steps(), {r.name for r in config.reference_rows()}
    for k, design in enumerate(steps, 1):
        run_dir = folder / "runs" / design.name
        eval_dir = run_dir / "eval"
        if only and design.name not in only:
            continue
        if broadcast((eval_dir / "summary.json").exists()):  # rank 0's files decide (nodes may not share them)
            console.print(f"[dim]({k}/{len(steps)}) {design.name}: done, skipped[/dim]")
            continue
        if only:
            held = broadcast(claim(run_dir) if is_main() else None)
            if held:
                console.print(f"[yellow]({k}/{len(steps)}) {design.name}: claimed by {held}; skipped[/yellow]")
                continue
        elapsed = time.time() - started
        console.rule(f"({k}/{len(steps)}) {design.name}  [{elapsed / 60:.1f} min so far]")
        t0 = time.time()
        final = None if design.name in references else train(train_config_for(config, design, run_dir))
        t1 = time.time()
        # Every process trains (DDP) and evaluates (its share of the texts); rank 0 writes. The reference rows (the
        # untrained backbone, the peers) are evaluated as they are: not designs.
        model = EmbeddingModel.from_pretrained(final, inference=True, device=config.device) if final else (
            reference_model(config, design))
        if isinstance(model, EmbeddingModel):  # not a peer loaded by sentence-transformers
            model.prefix_reuse = config.prefix_reuse
        evaluate_design(model, config, eval_dir, cache)
        del model
        if is_main():  # wall time of this invocation's work (a resumed training counts only its resumed part)
            write_json(run_dir / "timing.json",
                       {"train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1)})
        if world()[1] > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
    console.print(f"all designs done in {(time.time() - started) / 60:.1f} min")
    return folder
