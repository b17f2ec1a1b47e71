"""The training config (`TrainConfig`, one YAML file) and `--set a.b=c` overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..configdoc import documented
from ..errors import UserError
from ..modelconfig import LoraSettings, ModelConfig
from .adapt import AdaptConfig
from .data import SourceConfig
from .distill import DistillSettings

# Fields that may change when a run is resumed: they do not change what the run computes.
RESUMABLE_FIELDS = {"max_time_minutes", "save_every", "keep_last", "log_every", "output_dir", "data_dir",
                    "progress", "num_threads", "device", "snapshot_steps", "prefix_reuse", "report_to"}


@documented
class TrainConfig(BaseModel):
    """Everything `poolattn train` does, in one YAML file (`--set a.b=c` overrides a field); the run folder keeps it,
    and a resumed run may change only RESUMABLE_FIELDS."""
    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the design to train (ModelConfig)")
    lora: LoraSettings | None = Field(default_factory=LoraSettings, description="the LoRA adapter (LoraSettings); "
                                      "null: no adapter (pooler only, or full_finetune)")
    full_finetune: bool = Field(False, description="train every backbone weight (with `lora: null`; use "
                                "model.dtype float32 for fp32 master weights)")
    data: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(path="train")],
                                     description="the training sources (SourceConfig); default: the data pack's "
                                     "`train` folder")
    data_dir: str | None = Field(None, description="where relative `data` paths are looked up; None: "
                                 "$POOLATTN_DATA, else ../shared/data")
    batch_size: int = Field(32, ge=1, description="the contrastive (global) batch: rows per step over all processes")
    chunk_size: int | None = Field(None, ge=1, description="GradCache chunk (texts per forward); None: no GradCache")
    lr: float = Field(1e-4, gt=0, description="peak learning rate (AdamW)")
    pooler_lr: float | None = Field(None, gt=0, description="a trainable pooler's own lr (it starts random); None: lr")
    warmup_steps: int = Field(100, ge=0, description="steps of linear warmup from 0 to lr")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="the lr after warmup: linear or "
                                                              "cosine decay to 0 at max_steps, or constant")
    weight_decay: float = Field(0.01, description="AdamW's weight decay (none on biases and norms)")
    max_grad_norm: float | None = Field(1.0, description="clip the gradient's norm to this; None: no clipping")
    max_steps: int = Field(1000, ge=1, description="optimizer steps to train")
    max_length: int | None = Field(None, description="training truncation; None: model.max_length (the saved model "
                                   "keeps model's)")
    passage_max_length: int | None = Field(
        None, ge=2, description="training truncation of positives and hard negatives (the documents side); None: "
        "max_length for both sides. Retrieval documents run long (e.g. 32 for queries, 128 for passages); counted "
        "as max_length_applies_to says")
    max_length_applies_to: Literal["all", "text"] = Field(
        "all", description="what training's max_length counts: `all` every token (instruction included), `text` "
        "the tokens after the instruction (the text's and EOS), the instruction's tokens coming on top")
    prefix_reuse: bool = Field(
        True, description="run the instruction all texts of a batch start with once per batch, not once per text, "
        "where attention is causal (exact: the same loss and gradients up to rounding); false: every text whole")
    scale: float = Field(20.0, description="cosine similarity x scale = 1 / temperature (20: temperature 0.05)")
    hard_negatives: bool = Field(True, description="false: rows' `negative` texts are dropped in the step (never "
                                 "encoded): in-batch negatives only, same batches")
    both_directions: bool = Field(
        False, description="true: rows of `symmetric` sources also score their positive against the batch's queries "
        "(the mean of both directions' InfoNCE, as sentence-transformers' MultipleNegativesSymmetricRankingLoss); "
        "others: forward only")
    matryoshka_dims: list[int] | None = Field(
        None, description="Matryoshka representation learning (sentence-transformers' MatryoshkaLoss): the loss is the "
        "weighted sum of the loss (InfoNCE, and distillation if set) on the embeddings cut to each of these widths "
        "and renormalised, e.g. [64, 128, 256] (increasing, at most the model's width; the full width is always "
        "trained: added with weight 1 when not listed); the saved model records the widths; None: full width only")
    matryoshka_weights: list[float] | None = Field(
        None, description="one weight per matryoshka_dims entry; None: 1 each (as sentence-transformers)")
    seed: int = Field(42, description="seeds the data order and the initialisation of LoRA and pooler")
    gradient_checkpointing: bool = Field(True, description="recompute the backbone's activations in the backward "
                                         "pass: less memory, more compute")
    device: str = Field("auto", description="auto (this process's GPU, else MPS, else CPU), cpu, cuda:N, mps")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads (process-wide); None: torch's "
                                    "default; 1 on a CPU shared with other jobs")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 autocast where bf16 is "
                                                           "fast; no: none; bf16: always")
    save_every: int = Field(100, ge=1, description="steps between checkpoints (written whole or not at all)")
    keep_last: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted")
    save_on_each_node: bool = Field(
        False, description="nodes without a shared file system: each node's first process writes whole checkpoints "
        "and the final model into its own output_dir (accelerate's name for it); false: rank 0 writes, every rank "
        "reads (shared storage)")
    snapshot_steps: list[int] = Field(
        default_factory=list, description="full model folders (as final/) at these steps, snapshots/step-NNNNNN: "
        "with schedule constant the snapshot at step k is the model a k-step run gives (same data order, same lr), "
        "so one run serves several budgets; default: none")
    log_every: int = Field(1, ge=1, description="steps between lines of metrics.jsonl")
    report_to: str = Field(
        "none", description="also send metrics.jsonl's numbers to an accelerate tracker: `tensorboard` (into "
        "<output_dir>/tensorboard), another tracker accelerate supports (wandb, mlflow, ...; its package installed), "
        "or `none`")
    output_dir: str = Field("runs/train", description="the run folder: config, metrics.jsonl, checkpoints/, final/")
    max_time_minutes: float | None = Field(None, description="stop cleanly (checkpoint + final model) after this much "
                                           "training time; None: no limit")
    progress: bool = Field(True, description="show a progress bar")
    distill: DistillSettings | None = Field(None, description="distillation from a sentence-transformers teacher "
                                            "beside InfoNCE (DistillSettings): OUTSIDE THE PAPER'S PROTOCOL, off by "
                                            "default")
    adapt: AdaptConfig | None = Field(
        None, description="an adaptation stage before contrastive training (AdaptConfig): LLM2Vec's masked next-token "
        "prediction or unsupervised SimCSE on the training texts, training the adapter that contrastive training "
        "continues; None: none (the paper's protocol)")

    @field_validator("report_to")
    @classmethod
    def _tracker(cls, v: str) -> str:
        from .tracking import check_name

        return check_name(v)

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
        if self.adapt is not None and self.lora is None and not self.full_finetune:
            raise ValueError("adapt trains the backbone: give it a `lora:` adapter (or full_finetune)")
        if self.model.matryoshka_dims is not None:
            raise ValueError("set the widths to train as `matryoshka_dims:`, not `model.matryoshka_dims` (that field "
                             "records a trained model's widths)")
        if self.matryoshka_dims is not None:  # the model's width is checked when the trainer has built it
            from ..matryoshka import check_widths

            check_widths(self.matryoshka_dims)
        weights = self.matryoshka_weights
        if weights is not None and (self.matryoshka_dims is None or len(weights) != len(self.matryoshka_dims)
                                    or any(not w > 0 for w in weights)):
            raise ValueError(f"matryoshka_weights {weights}: give one positive weight per matryoshka_dims entry "
                             f"({self.matryoshka_dims})")
        return self

    def matryoshka(self, width: int) -> tuple[list[int], list[float]] | None:
        """(widths, weights) the loss is summed over for a model of embedding width `width`: matryoshka_dims (checked
        against `width`) with the full width added at weight 1 when not listed; None without matryoshka_dims."""
        if self.matryoshka_dims is None:
            return None
        from ..matryoshka import check_widths

        check_widths(self.matryoshka_dims, width)
        dims, weights = list(self.matryoshka_dims), list(self.matryoshka_weights or [1.0] * len(self.matryoshka_dims))
        return (dims, weights) if dims[-1] == width else (dims + [width], weights + [1.0])

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
