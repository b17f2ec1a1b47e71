"""The controlled experiment: every design trained on the same data, order and seed, then evaluated on the same
tasks, with the untrained backbone and any peer models (poolattn.experiment.peers) as reference rows; then statistics
and a report.

One folder holds everything and is the unit of resumption (its layout: poolattn.experiment.layout): a design whose
summary.json exists is done; one with a checkpoint resumes from it; `experiment.yaml` pins the config the folder was
started with.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from ..fileio import write_json, write_text
from .config import ExperimentConfig, changed_fields, train_config_for
from .layout import ExperimentLayout

log = logging.getLogger(__name__)


def write_config_once(folder: Path, config: ExperimentConfig) -> None:
    """Pin the config a folder was started with; a resumed run must not silently change the experiment."""
    path = ExperimentLayout(folder).config
    dumped = config.model_dump(mode="json")
    if path.exists():
        # Validated again so fields added since the folder was started compare at their defaults.
        before = ExperimentConfig.model_validate(yaml.safe_load(path.read_text())).model_dump(mode="json")
        # Where the run lives and how it is reported may change; what it computes may not.
        # A peer may be added to a finished experiment; prefix_reuse changes speed, not results.
        keep = ("output_dir", "report", "device", "peers", "prefix_reuse", "fuse_lora")
        # Where the data lives, not what it is; where training curves go, not what they show.
        moved = ("eval.data_dir", "train.data_dir", "train.report_to")
        changed = [k for k in changed_fields(before, dumped) if k.split(".")[0] not in keep and k not in moved]
        if changed:
            raise ValueError(f"{path} holds a different experiment config ({', '.join(changed[:5])} changed); "
                             f"use a new output_dir or restore it")
    write_text(path, yaml.safe_dump(dumped, sort_keys=False))


def evaluate_design(model, config: ExperimentConfig, out: Path, cache: bool = True) -> None:
    """Evaluate into `out`, after each of eval.dimensions' widths into its own folder (ExperimentLayout.at_width):
    `out`'s summary.json, written last, marks the row done."""
    from ..evaluation import evaluate

    e, widths = config.eval, []
    if e.dimensions:  # `model` is then loaded (an EmbeddingModel or a sentence-transformers model)
        full = model.embedding_dim if hasattr(model, "embedding_dim") else model.get_embedding_dimension()
        widths = [d for d in e.dimensions if d <= full]
        if len(widths) < len(e.dimensions):
            log.warning("%s: eval.dimensions %s are above its %d dimensions: not evaluated at them", out.parent.name,
                        [d for d in e.dimensions if d > full], full)
    for dims in widths + [None]:
        evaluate(model, e.tasks, data_dir=e.data_dir, output_dir=out if dims is None else ExperimentLayout.at_width(
                 out, dims), instructions=e.instructions, batch_size=e.batch_size, cache=cache,
                 languages=e.languages, all_splits=e.all_splits, dedup=e.dedup, dimensions=dims)


def _plan_budget(config: ExperimentConfig, folder: Path, console) -> ExperimentConfig:
    """Measure this machine and estimate the run (budget.json; read back on resume), applying the budget's choice.
    Measures only with one process and work left; several processes need budget.json from a one-process start."""
    from ..distributed import is_main, world
    from .budget import plan, print_estimate

    layout = ExperimentLayout(folder)
    planned = layout.budget.exists()
    left = any(not layout.done(d.name) for d in config.steps())
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
    layout = ExperimentLayout(folder)
    config = ExperimentConfig.model_validate(yaml.safe_load(layout.config.read_text()))
    return [d.name for d in config.steps() if not layout.done(d.name)]


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
    import torch
    from rich.console import Console

    from ..device import resolve_device
    from ..distributed import broadcast, ensure_group, is_main, world
    from ..environment import collect_environment
    from ..model import EmbeddingModel
    from ..training import train
    from .peers import check_peer, reference_model, selected

    console = Console(stderr=True)
    config.check_data()
    folder = Path(config.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    layout = ExperimentLayout(folder)
    ensure_group(resolve_device(config.device).type)
    steps = config.steps()
    if only:
        only = selected(only, config.peer_rows())
        unknown = sorted(set(only) - {d.name for d in steps})
        if unknown:
            raise ValueError(f"--design {', '.join(unknown)}: not in this experiment; its designs: "
                             f"{', '.join(d.name for d in steps)}" + (" (peers: every peer)" if config.peers else ""))
    for peer in config.peer_rows():  # a misnamed local path fails now, not after hours of training
        if (not only or peer.name in only) and not layout.done(peer.name):
            check_peer(peer)
    config = _plan_budget(config, folder, console)
    machine = collect_environment()
    if is_main():  # launchers set RANK before any process group exists
        write_config_once(folder, config)
        write_json(layout.environment, machine)
    started = time.time()
    steps, references = config.steps(), {r.name for r in config.reference_rows()}
    for k, design in enumerate(steps, 1):
        run_dir = layout.run(design.name)
        if only and design.name not in only:
            continue
        if broadcast(layout.done(design.name)):  # rank 0's files decide (nodes may not share them)
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
        model = EmbeddingModel.from_pretrained(final, inference=True, device=config.device,
                                               fuse_lora=config.fuse_lora) if final else (
            reference_model(config, design))
        if isinstance(model, EmbeddingModel):  # not a peer loaded by sentence-transformers
            model.prefix_reuse = config.prefix_reuse
        evaluate_design(model, config, layout.eval(design.name), cache)
        del model
        if is_main():  # wall time of this invocation's work (a resumed training counts only its resumed part), and
            # the machine it ran on: a folder resumed across sessions may hold runs of several CPU kinds
            write_json(layout.timing(design.name),
                       {"train_seconds": round(t1 - t0, 1), "eval_seconds": round(time.time() - t1, 1),
                        "cpu": machine["cpu"], "cpu_fast_bf16": machine.get("cpu_fast_bf16"),
                        "allocator": machine.get("allocator"), "gpus": machine["gpus"],
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        if world()[1] > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
    console.print(f"all designs done in {(time.time() - started) / 60:.1f} min")
    return folder
