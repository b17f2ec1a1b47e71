"""The training config (`TrainConfig`, one YAML file) and `--set a.b=c` overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import UserError
from ..model import LoraSettings, ModelConfig
from .data import SourceConfig
from .distill import DistillSettings

# Fields that may change when a run is resumed: they do not change what the run computes.
RESUMABLE_FIELDS = {"max_time_minutes", "save_every", "keep_last", "log_every", "output_dir", "data_dir",
                    "progress", "num_threads", "device", "snapshot_steps", "prefix_reuse"}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraSettings | None = Field(default_factory=LoraSettings)  # None: no adapter (pooler only, or full)
    full_finetune: bool = False  # train every backbone weight (use model.dtype float32 for fp32 master weights)
    data: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(path="train")])
    data_dir: str | None = None  # where relative `data` paths are looked up; None: $POOLATTN_DATA, else ../shared/data
    batch_size: int = Field(32, ge=1)  # contrastive (global) batch: rows per step over all processes
    chunk_size: int | None = Field(None, ge=1)  # GradCache chunk (texts per forward); None: no GradCache
    lr: float = Field(1e-4, gt=0)
    pooler_lr: float | None = Field(None, gt=0)  # trainable pooler's own lr (it starts random); None: lr
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    max_steps: int = Field(1000, ge=1)
    max_length: int | None = None  # training truncation; None: model.max_length (the saved model keeps model's)
    max_length_applies_to: Literal["all", "text"] = Field(
        "all", description="what training's max_length counts: `all` every token (instruction included), `text` "
        "the tokens after the instruction (the text's and EOS), the instruction's tokens coming on top")
    prefix_reuse: bool = Field(
        True, description="run the instruction all texts of a batch start with once per batch, not once per text, "
        "where attention is causal (exact: the same loss and gradients up to rounding); false: every text whole")
    scale: float = 20.0  # cosine similarity x scale = 1 / temperature
    # false: rows' `negative` texts are dropped in the step (never encoded): in-batch negatives only, same batches
    hard_negatives: bool = True
    # true: rows of `symmetric` sources also score their positive against the batch's queries (the mean of both
    # directions' InfoNCE, as sentence-transformers' MultipleNegativesSymmetricRankingLoss); others: forward only
    both_directions: bool = False
    seed: int = 42
    gradient_checkpointing: bool = True
    device: str = "auto"  # auto (this process's GPU, else MPS, else CPU), cpu, cuda:N, mps
    num_threads: int | None = Field(None, ge=1)  # torch intra-op threads (process-wide); None: torch's default
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"  # auto: bf16 autocast where bf16 is fast
    save_every: int = Field(100, ge=1)
    keep_last: int = Field(2, ge=1)
    # Nodes without a shared file system: each node's first process writes whole checkpoints and the final model
    # into its own output_dir (accelerate's name for it); false: rank 0 writes, every rank reads (shared storage).
    save_on_each_node: bool = False
    # Full model folders (as final/) at these steps, snapshots/step-NNNNNN: with schedule constant the snapshot at
    # step k is the model a k-step run gives (same data order, same lr), so one run serves several budgets.
    snapshot_steps: list[int] = Field(default_factory=list)
    log_every: int = Field(1, ge=1)
    output_dir: str = "runs/train"
    max_time_minutes: float | None = None  # stop cleanly (checkpoint + final model) after this much training time
    progress: bool = True
    # Distillation from a sentence-transformers teacher beside InfoNCE: OUTSIDE THE PAPER'S PROTOCOL, off by default.
    distill: DistillSettings | None = None

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads an unquoted `no` (config file or --set) as false

    @model_validator(mode="after")
    def _check(self):
        if self.model.lora is not None:
            raise ValueError("set LoRA under `lora:`, not `model.lora` (that field records a trained adapter)")
        if self.full_finetune and self.lora is not None:
            raise ValueError("full_finetune trains every weight: set `lora: null` too")
        if not self.data:
            raise ValueError("data: give at least one training source")
        return self

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        from ..configfile import read_config

        return cls.model_validate(apply_overrides(read_config(path), overrides or []))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` (value parsed as YAML; `data.0.weight=2` indexes lists) applied to a copy of `raw`."""
    import copy

    out = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: not key=value (e.g. --set lr=2e-4 or --set model.pooling=mean)", 2)
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            problem = "no key before '='" if not key.strip() else f"the key {key.strip()!r} has an empty part"
            raise UserError(f"--set {item}: {problem} (e.g. --set lr=2e-4 or --set model.pooling=mean)", 2)
        parsed = yaml.safe_load(value) if value.strip() else None
        try:
            node: Any = out
            for part in parts[:-1]:
                if isinstance(node, list):
                    node = node[int(part)]
                else:
                    if node.get(part) is None:  # absent, or `null` in the file (e.g. lora: null)
                        node[part] = {}
                    node = node[part]
            if isinstance(node, list):
                node[int(parts[-1])] = parsed
            else:
                node[parts[-1]] = parsed
        except (AttributeError, IndexError, ValueError, TypeError) as err:
            raise ValueError(f"override {item!r}: {key} does not name a config field ({err})") from None
    return out
