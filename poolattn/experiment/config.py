"""An experiment's configuration (experiment.yaml): the designs, the shared base model, training and evaluation
settings, seeds and reference rows; and the training config each design gets from it (the same for every design
but its model, and a lever design's own fields)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..configdoc import documented
from ..modelconfig import ModelConfig
from .designs import MEAN_BASELINES, PAPER_DESIGNS, Design, named_design  # the registry (once defined here)
from .layout import ExperimentLayout
from .peers import PEER_PREFIX, Peer, peer_rows

BASELINE = "baseline"


@documented
class ReportSettings(BaseModel):
    """`report:` section of experiment.yaml (read by poolattn.report); command-line options override it."""
    model_config = ConfigDict(extra="forbid")
    reference: str | None = Field(None, description="the design (or reference row) the per-task differences are "
                                  "drawn against; None: the first design")
    n_resamples: int = Field(1000, ge=50, description="permutations and bootstrap resamples per per-dataset test")
    confidence: float = Field(0.95, gt=0, lt=1, description="the confidence level of the intervals")
    alpha: float = Field(0.05, gt=0, lt=1, description="the significance level of the tests (Holm-adjusted)")
    seed: int = Field(0, description="seeds the resampling")
    baseline_in_tests: bool = Field(False, description="also test every design against the untrained baseline")


@documented
class EvalSettings(BaseModel):
    """`eval:` section of experiment.yaml: what every design (and reference row) is scored on."""
    model_config = ConfigDict(extra="forbid")
    tasks: str | list[str] = Field("lite", description="task names, suites (lite, full) and categories (sts, "
                                   "retrieval, ...), a list or comma-separated")
    data_dir: str | None = Field(None, description="the data pack; None: $POOLATTN_DATA, else ../shared/data "
                                 "(poolattn.datadir)")
    batch_size: int = Field(32, description="texts per encoded batch")
    instructions: dict[str, str] | None = Field(None, description="task -> instruction, replacing the instruction "
                                                "table's entries for those tasks")
    languages: list[str] | None = Field(["eng"], description="subsets of multilingual hub tasks (ISO 639-3); None: "
                                        "every subset")
    all_splits: bool = Field(False, description="score every split of each task; default: the main split only (the "
                             "leaderboard's)")
    dedup: bool = Field(True, description="encode each distinct text once per task and side (exact); false: as mteb "
                        "passes them")
    dimensions: list[int] | None = Field(
        None, description="also score every row at each of these widths, e.g. [64, 128, 256] (vectors cut to the "
        "first N components, renormalised; the full vectors' embedding cache is shared), each into its own folder "
        "runs/<row>/eval-d<N>/ beside eval/; a width above a row's own is skipped with a warning; None: full width "
        "only")

    @field_validator("dimensions")
    @classmethod
    def _widths(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            from ..matryoshka import check_widths

            check_widths(v, what="eval.dimensions")
        return v


@documented
class ExperimentConfig(BaseModel):
    """One experiment.yaml: designs trained alike from a shared base model and training config, evaluated on the
    same tasks beside reference rows, then reported with paired tests. `poolattn experiment` runs it; the folder
    keeps it, and a rerun resumes."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field("experiment", description="the experiment's name (in the report)")
    output_dir: str = Field("runs/experiment", description="the experiment folder: runs/<design>/{train,eval}, the "
                            "report")
    base: ModelConfig = Field(default_factory=ModelConfig, description="model settings every design shares "
                              "(ModelConfig); a design sets pooling, attention, pooling_kwargs, mask_instruction and echo")
    designs: list[Design] = Field(default_factory=lambda: list(PAPER_DESIGNS),
                                  description="named designs (1-eos-causal), named designs with overrides ({name: "
                                  "..., pooling_kwargs: ...}) or full designs (Design); default: the paper's five")
    include_mean_baselines: bool = Field(False, description="also train the mean-pooling designs (MEAN_BASELINES)")
    baseline: Design | None = Field(Design(name=BASELINE, pooling="mean", attention="causal"),
                                    description="the untrained reference row; None: none")
    peers: list[str] = Field([], description="established models evaluated as they are beside the designs (reference "
                             "rows runs/peer-<slug>, not tested): names or paths poolattn.evaluation.load_model "
                             "takes, e.g. all-MiniLM-L6-v2")
    train: dict[str, Any] = Field({}, description="TrainConfig fields, shared by every design (model and output_dir "
                                  "are set here)")
    eval: EvalSettings = Field(default_factory=EvalSettings, description="what every row is scored on (EvalSettings)")
    seed: int = Field(42, description="the training seed when `seeds` is not set")
    seeds: list[int] | None = Field(
        None, description="replicates: with two or more seeds every design is trained once per seed (data order and "
        "initialisation of LoRA and pooler change with it) as `<design>-s<seed>`; the report adds the mean and "
        "spread over seeds")
    device: str = Field("auto", description="where designs train and are evaluated: auto, cpu, cuda:N, mps (may "
                        "change on resume)")
    budget_minutes: float | None = Field(
        None, gt=0, description="total minutes for the run on this machine: steps, lr, warmup and number of seeds "
        "come from the recipe table that fits (poolattn.experiment.budget); None: train and seeds as configured (the "
        "estimate is printed either way)")
    prefix_reuse: bool = Field(
        True, description="in training and evaluation, run the instruction all texts of a batch start with once per "
        "batch where attention is causal (exact up to rounding: may change on resume); false: every text whole")
    fuse_lora: bool = Field(
        True, description="in evaluation, run each LoRA linear of a trained design as one matrix product (exact up "
        "to rounding: may change on resume); false: peft's unfused path")
    report: ReportSettings = Field(default_factory=ReportSettings, description="the report's statistics "
                                   "(ReportSettings)")

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
    def _base_widths(self):
        if self.base.matryoshka_dims is not None:
            raise ValueError("base.matryoshka_dims records a trained model's widths: train them with "
                             "train.matryoshka_dims (or a design's train: {matryoshka_dims: [...]})")
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
    def _echo_causal(self):
        if self.base.echo:
            rows = self.base_designs() + ([self.baseline] if self.baseline else [])
            bad = [d.name for d in rows if d.attention != "causal"]
            if bad:
                raise ValueError(f"base.echo: true needs causal attention, but {bad} are bidirectional: set echo on "
                                 f"the causal designs instead (echo-eos-causal, echo-mean-causal or `echo: true`)")
        return self

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
        from ..datadir import resolve_data_dir

        resolve_data_dir(self.eval.data_dir, "eval.data_dir")
        resolve_data_dir(self.train.get("data_dir"), "train.data_dir")

    def seed_for(self, design: Design) -> int:
        return design.seed if design.seed is not None else (self.seeds[0] if self.seeds else self.seed)

    def model_config_for(self, design: Design) -> ModelConfig:
        return self.base.model_copy(update={"pooling": design.pooling, "attention": design.attention,
                                            "pooling_kwargs": design.pooling_kwargs,
                                            "mask_instruction": design.mask_instruction or self.base.mask_instruction,
                                            "echo": design.echo or self.base.echo,
                                            "backbone": design.backbone or self.base.backbone})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
        from ..configfile import read_config
        from ..training import apply_overrides

        return cls.model_validate(apply_overrides(read_config(path), overrides or []))



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
    from ..training import TrainConfig

    raw = {**merge_train(config.train, design.train), "model": config.model_config_for(design).model_dump(),
           "output_dir": str(ExperimentLayout.train_in(run_dir)), "seed": config.seed_for(design)}
    raw.setdefault("data_dir", config.eval.data_dir)
    raw.setdefault("device", config.device)
    raw.setdefault("prefix_reuse", config.prefix_reuse)
    return TrainConfig.model_validate(raw)
