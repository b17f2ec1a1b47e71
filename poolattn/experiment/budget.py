"""A budget that fits the machine: measure this machine's training step and evaluation speed before an experiment
trains, estimate the whole run, and (with `budget_minutes`) pick steps and seeds from the recipe table.

Measured (once per experiment folder, in a throwaway folder):
  * training: PROBE_STEPS real steps of the first design of every step group (_step_group: a trainable pooler
    (latent, multilayer) or not, attention, echo or not, which adaptation stage, which backbone, and the training
    fields that set a step's work: batch, chunks, lengths, LoRA rank, teacher), each design charged its group's step time:
    a trainable pooler costs more per step, echo feeds twice the tokens. Step time = the trainer's elapsed time
    from the first logged step to the last over the steps between (the first step warms up); the rest of the
    probe's wall time (model load, first step, saving) is charged once per design as overhead. A design with an
    adaptation stage (`adapt:`) is probed with PROBE_STEPS of the stage too, and charged its steps at that rate;
  * evaluation: per task, a sample of its texts (EVAL_PROBE_TEXTS over the suite) encoded with the task's instruction
    as evaluation applies it, by the untrained baseline model and by the first design of every other evaluation
    group (_eval_group: trainable pooler or not, attention, echo, backbone), each design charged its group's speed: a
    trainable pooler costs more, a bidirectional design cannot reuse the instruction's prefix pass (a causal design
    can), echo encodes every text twice; a task's time = its
    characters to encode (poolattn.evaluation.pack.encode_cost) / the characters per second of its sample. Without
    the instructions and the pooler the estimate was half the default experiment's real evaluations (measured:
    docs/results.md#evaluation); with one probe for every pooler design, causal and bidirectional, it overstated
    causal designs' evaluation and understated bidirectional ones'.
  * peers (`peers:`): each one's evaluation, from its own encoding speed over the same sample (a peer encodes as
    it was published: no instruction).
Estimate = baseline evaluation + every peer's evaluation + for every design x seed: overhead + steps x step time +
adaptation steps x their step time + evaluation.

With `budget_minutes` the chooser takes the largest recipe of RECIPES (ordered, smallest useful first) whose
estimate fits; every design gets its steps, lr and warmup, and the experiment its number of seeds. It writes the
choice and the minimum detectable effect of a category-average difference that the recipe's seed SD implies into
`budget.json` (the report's leading section states it), and refuses in one line before any training when even the
smallest recipe does not fit. A folder that has `budget.json` resumes with its choice: nothing is measured again.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ..fileio import write_json
from ..pooling import is_trainable
from ..stats.seeds import minimum_detectable_effect
from .layout import ExperimentLayout

if TYPE_CHECKING:
    from .config import ExperimentConfig
    from .designs import Design

PROBE_STEPS = 3  # the first step warms up: 2 timed intervals
EVAL_PROBE_TEXTS = 256
PLACEHOLDER = ("seed SD is a placeholder (this many steps not yet measured: the 120-step SD of the budget study)")


class Recipe(BaseModel):
    """One row of the recipe table: what every design trains with, how many seeds, and the planning numbers."""
    model_config = ConfigDict(frozen=True)
    steps: int
    seeds: int
    lr: float
    warmup_steps: int
    seed_sd: float  # SD over seeds of a category-average paired difference at this many steps
    item_se: float  # item SE of a category-average difference shared by all seeds
    measured: bool = False  # False: seed_sd / item_se are placeholders
    schedule: str = "constant"
    batch_size: int = 16
    max_length: int = 32


# Ordered: smallest useful first (three seeds: with two, the t test on one degree of freedom detects nothing
# smaller than ~14 SEs). Measured by the budget study (configs/study_budget.yaml, runs/study-budget/study-budget.md;
# SmolLM2-135M, designs 1 and 5, lr 1e-3 constant after 5 warmup steps, batch 16 x 32 tokens, seeds 42-44, STS and
# clustering tasks of the lite suite; docs/results.md#the-budget-study): seed_sd is the SD over seeds of the
# design-5-minus-design-1 difference of the all-task average, item_se its shared item SE (at 30 steps the estimate
# clipped to 0; the 60-step value is used for both). The lr is the sweep's pick (1e-4, 3e-4, 1e-3 at seed 42).
# The 200-step rows are not measured: their SD is the 60-step one (placeholders until a study measures them).
RECIPES: tuple[Recipe, ...] = (
    Recipe(steps=30, seeds=3, lr=1e-3, warmup_steps=5, seed_sd=0.256, item_se=0.0046, measured=True),
    Recipe(steps=60, seeds=3, lr=1e-3, warmup_steps=5, seed_sd=0.182, item_se=0.0046, measured=True),
    Recipe(steps=60, seeds=5, lr=1e-3, warmup_steps=5, seed_sd=0.182, item_se=0.0046, measured=True),
    Recipe(steps=120, seeds=3, lr=1e-3, warmup_steps=5, seed_sd=0.124, item_se=0.0091, measured=True),
    Recipe(steps=120, seeds=5, lr=1e-3, warmup_steps=5, seed_sd=0.124, item_se=0.0091, measured=True),
    Recipe(steps=200, seeds=5, lr=1e-3, warmup_steps=5, seed_sd=0.124, item_se=0.0091),
)


class BudgetError(ValueError):
    """The budget does not fit even the smallest useful recipe (raised before any training)."""


@dataclass
class Measurement:
    step_seconds: dict[str, float]  # design name (a configured design) -> seconds per training step
    overhead_seconds: float  # per trained design: load, first step, save
    chars_per_second: float  # evaluation encoding speed of the untrained model over the suite
    eval_chars: float  # characters the suite encodes per model
    eval_seconds_by_design: dict[str, float] = field(default_factory=dict)  # a design's evaluation, when measured
    peer_eval_seconds: dict[str, float] = field(default_factory=dict)  # a peer's row name -> its evaluation
    adapt_step_seconds: dict[str, float] = field(default_factory=dict)  # a design with `adapt:` -> s per stage step
    adapt_steps: dict[str, int] = field(default_factory=dict)  # a design with `adapt:` -> the stage's steps

    @property
    def eval_seconds(self) -> float:
        """The untrained model's evaluation (the baseline row)."""
        return self.eval_chars / self.chars_per_second

    def eval_for(self, design: str) -> float:
        return self.eval_seconds_by_design.get(design, self.eval_seconds)


def _adapt_objective(config: ExperimentConfig, design: Design) -> str | None:
    adapt = {**(config.train.get("adapt") or {}), **(design.train.get("adapt") or {})}
    return adapt.get("objective", "mntp") if adapt else None


def _step_group(config: ExperimentConfig, design: Design) -> tuple:
    """What a design's training step time depends on: a trainable pooler or not, the attention (only a causal
    design reuses the instruction's prefix pass), echo (twice the tokens) or not, its adaptation stage's objective
    (None: none), its own backbone (None: the base's), and the training fields that set a step's work: texts per
    step and GradCache chunks, query and passage lengths, hard negatives, the LoRA rank (or full fine-tuning), a
    distillation teacher, gradient checkpointing (a lever of `batch_size: 64` or `passage_max_length: 128` was
    charged the reference's step time)."""
    from .config import train_config_for

    tc = train_config_for(config, design, Path("."))
    return (is_trainable(design.pooling), design.attention, design.echo, _adapt_objective(config, design),
            design.backbone, tc.batch_size, tc.chunk_size, tc.max_length, tc.passage_max_length,
            tc.max_length_applies_to, tc.hard_negatives, tc.lora.r if tc.lora else None, tc.full_finetune,
            tc.distill.teacher if tc.distill else None, tc.gradient_checkpointing)


def _eval_group(design: Design) -> tuple[bool, str, bool, str | None]:
    """What a design's evaluation speed depends on: a trainable pooler or not, the attention, echo or not, and its
    own backbone."""
    return is_trainable(design.pooling), design.attention, design.echo, design.backbone


def _probe_step(config: ExperimentConfig, design: Design) -> tuple[float, float, float | None, int]:
    """(seconds per step, overhead seconds, seconds per adaptation step or None, the stage's steps) from
    PROBE_STEPS real steps (and as many of the design's adaptation stage, when it has one) in a throwaway folder."""
    from ..training import train
    from .config import train_config_for

    with tempfile.TemporaryDirectory(prefix="poolattn-probe-") as tmp:
        tc = train_config_for(config, design, Path(tmp))
        adapt, adapt_steps = tc.adapt, tc.adapt.steps if tc.adapt else 0
        tc = tc.model_copy(update={
            "max_steps": PROBE_STEPS, "save_every": PROBE_STEPS, "progress": False, "max_time_minutes": None,
            "adapt": adapt.model_copy(update={"steps": PROBE_STEPS}) if adapt else None})
        t0 = time.perf_counter()
        train(tc)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tc.output_dir) / "metrics.jsonl").read_text().splitlines()]

    def per_step(elapsed: list[float]) -> float | None:
        return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1) if len(elapsed) > 1 else None

    from ..training.adapt import STAGE

    step = per_step([r["elapsed_s"] for r in rows if "elapsed_s" in r and r.get("stage") != STAGE])
    adapt_step = per_step([r["elapsed_s"] for r in rows if "elapsed_s" in r and r.get("stage") == STAGE])
    step = step if step is not None else wall / PROBE_STEPS
    if adapt and adapt_step is None:
        adapt_step = step
    spent = PROBE_STEPS * (step + (adapt_step or 0.0))
    return step, max(wall - spent, 0.0), adapt_step, adapt_steps


def _strings(part, k: int) -> list[str]:
    """Up to k strings of each text column of a split (a datasets.Dataset, or a dict of them: retrieval)."""
    if isinstance(part, dict):
        return [t for v in part.values() if hasattr(v, "column_names") for t in _strings(v, k)]
    if not hasattr(part, "column_names"):
        return []
    rows = part[:k]
    return [t for c in part.column_names if not c.endswith("id") for t in rows[c] if isinstance(t, str) and t][:k]


def _suite_samples(config: ExperimentConfig) -> list[tuple[str | None, list[str], float]]:
    """Per task of the suite: (its instruction as evaluation applies it, a sample of its texts, the characters the
    whole task encodes)."""
    from ..evaluation.instructions import instruction_for
    from ..evaluation.pack import encode_cost, load_task
    from ..evaluation.selection import resolve_tasks, task_spec

    tasks = [load_task(task_spec(n, config.eval.data_dir))
             for n in resolve_tasks(config.eval.tasks, config.eval.data_dir)]
    per_task = max(EVAL_PROBE_TEXTS // max(len(tasks), 1), 1)
    out = []
    for task in tasks:
        data = next(iter(task.dataset.values())) if task.hf_subsets[0] in task.dataset else task.dataset
        texts = _strings(data[task.eval_splits[0]], per_task)
        if texts:
            out.append((instruction_for([task.metadata.name], task.metadata, config.eval.instructions), texts,
                        float(encode_cost(task))))
    return out


def _eval_seconds(model, samples, batch_size: int) -> float:
    """Seconds this model takes to encode the suite: per task, its characters at its sample's speed. A poolattn
    model encodes with the task's instruction; a sentence-transformers peer without one, as it was published."""
    from ..model import EmbeddingModel

    def encode(texts, instruction):
        kw = {"instruction": instruction} if isinstance(model, EmbeddingModel) else {}
        model.encode(texts, batch_size=batch_size, show_progress_bar=False, **kw)

    encode(samples[0][1][:4], samples[0][0])  # warm
    total = 0.0
    for instruction, texts, chars in samples:
        t0 = time.perf_counter()
        encode(texts, instruction)
        total += chars * max(time.perf_counter() - t0, 1e-6) / max(sum(map(len, texts)), 1)
    return total


def measure(config: ExperimentConfig) -> Measurement:
    """This machine's training step per probed design and evaluation speed (see module doc)."""
    from ..model import EmbeddingModel
    from .peers import reference_model

    designs = config.base_designs()
    probes = {}  # step group -> the first design of it
    for d in designs:
        probes.setdefault(_step_group(config, d), d)
    timed = {group: _probe_step(config, d) for group, d in probes.items()}
    charged = {d.name: timed[_step_group(config, d)] for d in designs}
    samples = _suite_samples(config)
    eval_chars = sum(chars for _, _, chars in samples)
    baseline = config.baseline or designs[0]
    plain = _eval_seconds(EmbeddingModel(config.model_config_for(baseline), device=config.device), samples,
                          config.eval.batch_size)
    by_group = {_eval_group(baseline): plain}
    for d in designs:  # a pooler's evaluation costs more than the backbone's alone; bidirectional, no prefix reuse
        if _eval_group(d) not in by_group:
            by_group[_eval_group(d)] = _eval_seconds(EmbeddingModel(config.model_config_for(d), device=config.device),
                                                     samples, config.eval.batch_size)
    peers = {}
    for peer in config.peer_rows():
        peers[peer.name] = _eval_seconds(reference_model(config, peer), samples, config.eval.batch_size)
    return Measurement({n: t[0] for n, t in charged.items()}, max(t[1] for t in timed.values()),
                       eval_chars / max(plain, 1e-6), eval_chars, {d.name: by_group[_eval_group(d)] for d in designs},
                       peers, {n: t[2] for n, t in charged.items() if t[2] is not None},
                       {n: t[3] for n, t in charged.items() if t[2] is not None})


def _training(config: ExperimentConfig, steps: int, step_seconds: dict[str, float]) -> dict[str, tuple[int, float]]:
    """Per design: (steps, training seconds): `steps`, or its own lever's `max_steps` (a lever of 960 steps, or of 30
    at batch 64, was charged the experiment's steps), at its step time, capped at its `max_time_minutes`."""
    from .config import merge_train

    designs = {d.name: d for d in config.base_designs()}
    out = {}
    for name, s in step_seconds.items():
        lever = designs[name].train if name in designs else {}
        n = int(lever.get("max_steps", steps))
        cap = merge_train(config.train, lever).get("max_time_minutes")
        out[name] = (n, min(n * s, cap * 60) if cap is not None else n * s)
    return out


def estimate(config: ExperimentConfig, m: Measurement, steps: int, seeds: int) -> dict:
    """Minutes for the baseline evaluation, every peer's and every design x seed at `steps` steps (a design's own
    `max_steps` where its lever sets one)."""
    training = _training(config, steps, m.step_seconds)
    per_design = {name: seeds * (m.overhead_seconds + training[name][1] + m.eval_for(name)
                                 + m.adapt_steps.get(name, 0) * m.adapt_step_seconds.get(name, 0.0)) / 60
                  for name in m.step_seconds}
    base = m.eval_seconds / 60 if config.baseline else 0.0
    peers = {name: s / 60 for name, s in m.peer_eval_seconds.items()}
    return {"steps": steps, "seeds": seeds, "baseline_minutes": base, "peer_minutes": peers,
            "design_minutes": per_design, "design_steps": {name: n for name, (n, _) in training.items()},
            "total_minutes": base + sum(peers.values()) + sum(per_design.values())}


def choose(config: ExperimentConfig, m: Measurement, budget_minutes: float,
           recipes: tuple[Recipe, ...] = RECIPES) -> tuple[Recipe, dict]:
    """The largest recipe (last in table order) whose estimate fits the budget; BudgetError when none does."""
    fits = [(r, e) for r in recipes if (e := estimate(config, m, r.steps, r.seeds))["total_minutes"] <= budget_minutes]
    if not fits:
        small = recipes[0]
        need = estimate(config, m, small.steps, small.seeds)["total_minutes"]
        raise BudgetError(f"budget_minutes={budget_minutes:g} does not fit the smallest useful recipe ({small.steps} "
                          f"steps x {small.seeds} seeds: estimated {need:.0f} min on this machine); raise "
                          f"budget_minutes to at least {need:.0f}, or unset it and choose train.max_steps and seeds")
    return fits[-1]


def apply_choice(config: ExperimentConfig, choice: dict) -> ExperimentConfig:
    """The config with the chosen steps, lr, warmup, schedule, batch and length (every design the same: the recipe
    as the study measured it) and seeds (the configured ones first, then the next integers)."""
    seeds = list(config.seeds or [config.seed])
    while len(seeds) < choice["seeds"]:
        seeds.append(max(seeds) + 1)
    train = {**config.train, "max_steps": choice["steps"], "lr": choice["lr"], "warmup_steps": choice["warmup_steps"],
             **{k: choice[k] for k in ("schedule", "batch_size", "max_length") if k in choice}}
    return config.model_copy(update={"train": train, "seeds": seeds[:choice["seeds"]]})


def plan(config: ExperimentConfig, folder: Path, measure_fn=None) -> tuple[ExperimentConfig, dict]:
    """Read `budget.json` (resume: same choice, nothing measured) or measure, estimate and choose, then write it.
    Returns the config to run (the choice applied when there is one) and the budget record."""
    path = ExperimentLayout(folder).budget
    if path.exists():
        record = json.loads(path.read_text())
        return (apply_choice(config, record["choice"]) if record.get("choice") else config), record
    m = (measure_fn or measure)(config)
    record: dict = {"measured": asdict(m) | {"probe_steps": PROBE_STEPS, "eval_seconds": m.eval_seconds},
                    "budget_minutes": config.budget_minutes, "choice": None}
    if config.budget_minutes is not None:
        recipe, est = choose(config, m, config.budget_minutes)
        mde = minimum_detectable_effect(recipe.seed_sd, recipe.item_se, recipe.seeds)
        record["choice"] = recipe.model_dump() | {
            "estimated_minutes": est["total_minutes"], "mde": mde,
            "mde_source": "seed SD measured by the budget study" if recipe.measured else PLACEHOLDER}
        record["estimate"] = est
        config = apply_choice(config, record["choice"])
    else:
        n_seeds = len(config.seeds) if config.seeds else 1
        record["estimate"] = estimate(config, m, int(config.train.get("max_steps", 1000)), n_seeds)
    write_json(path, record)
    return config, record


def print_estimate(record: dict, console) -> None:
    """The estimate (and choice) as a rich table before training starts."""
    from rich.table import Table

    est, m = record["estimate"], record["measured"]
    table = Table(title=f"Estimated run on this machine: {est['total_minutes']:.1f} min "
                        f"({est['steps']} steps x {est['seeds']} seed(s) per design)")
    table.add_column("design")
    table.add_column("s / step", justify="right")
    table.add_column("minutes (all seeds)", justify="right")
    if est["baseline_minutes"]:
        table.add_row("baseline (evaluation only)", "-", f"{est['baseline_minutes']:.1f}")
    for name, minutes in est.get("peer_minutes", {}).items():  # a budget.json from before peers were counted
        table.add_row(f"{name} (evaluation only)", "-", f"{minutes:.1f}")
    adapt = m.get("adapt_step_seconds") or {}  # a budget.json from before the stage was estimated has none
    for name, minutes in est["design_minutes"].items():
        own = (est.get("design_steps") or {}).get(name, est["steps"])  # a lever's own max_steps
        step = f"{m['step_seconds'][name]:.2f}" + (f" x {own} steps" if own != est["steps"] else "") + (
            f" (+{m['adapt_steps'][name]} adapt x {adapt[name]:.2f})" if name in adapt else "")
        table.add_row(name, step, f"{minutes:.1f}")
    console.print(table)
    pooled = sorted({v for v in (m.get("eval_seconds_by_design") or {}).values() if v != m["eval_seconds"]})
    console.print(f"evaluation: {m['eval_chars'] / 1e6:.2f} M characters per model, with the tasks' instructions: "
                  f"{m['eval_seconds'] / 60:.1f} min for the untrained model"
                  + (f", {pooled[-1] / 60:.1f} min with a trainable pooler" if pooled else "")
                  + f"; per design {m['overhead_seconds']:.0f} s of loading and saving")
    c = record.get("choice")
    if c:
        console.print(f"budget {record['budget_minutes']:g} min: chose {c['steps']} steps x {c['seeds']} seeds "
                      f"(lr {c['lr']:g}, warmup {c['warmup_steps']}); detectable category-average difference "
                      f"about {100 * c['mde']:.1f} points at 80% power ({c['mde_source']})")
