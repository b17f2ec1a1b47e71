"""The controlled experiment: every design trained on the same data, order and seed, then evaluated on the same
tasks, with the untrained backbone as a reference row; then statistics and a report.

One folder holds everything and is the unit of resumption: a design whose `runs/<name>/eval/summary.json` exists
is done; one with a checkpoint resumes from it; `experiment.yaml` pins the config the folder was started with.

    EXPERIMENT/experiment.yaml   config as run          EXPERIMENT/environment.json
    EXPERIMENT/runs/<design>/train/   trainer's run folder (checkpoints, metrics.jsonl, final model)
    EXPERIMENT/runs/<design>/eval/    evaluation results (summary.json, <task>.json, <task>.items.json)
    EXPERIMENT/report.{md,html,json}, *.png
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .model import ModelConfig

log = logging.getLogger(__name__)

BASELINE = "baseline"


class Design(BaseModel):
    """One cell of the grid: a name and the ModelConfig fields that differ from the experiment's base."""
    model_config = ConfigDict(extra="forbid")
    name: str
    pooling: str
    attention: Literal["causal", "bidirectional"] = "causal"
    pooling_kwargs: dict[str, Any] = {}


PAPER_DESIGNS = [
    Design(name="1-eos-causal", pooling="eos", attention="causal"),
    Design(name="2-latent-causal", pooling="latent", attention="causal"),
    Design(name="3-multilayer-causal", pooling="multilayer", attention="causal"),
    Design(name="4-latent-bidirectional", pooling="latent", attention="bidirectional"),
    Design(name="5-multilayer-bidirectional", pooling="multilayer", attention="bidirectional"),
]
MEAN_BASELINES = [
    Design(name="mean-causal", pooling="mean", attention="causal"),
    Design(name="mean-bidirectional", pooling="mean", attention="bidirectional"),
]


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: str | list[str] = "lite"
    data_dir: str = "../shared/data"
    batch_size: int = 32
    instructions: dict[str, str] | None = None


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "experiment"
    output_dir: str = "runs/experiment"
    base: ModelConfig = Field(default_factory=ModelConfig)
    designs: list[Design] = Field(default_factory=lambda: list(PAPER_DESIGNS))
    include_mean_baselines: bool = False
    baseline: Design | None = Design(name=BASELINE, pooling="mean", attention="causal")  # untrained reference
    train: dict[str, Any] = {}  # TrainConfig fields, shared by every design (model and output_dir are set here)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    seed: int = 42
    report: dict[str, Any] = {}

    @model_validator(mode="after")
    def _unique_names(self):
        names = [d.name for d in self.all_designs()]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"design names must be unique; repeated: {dup}")
        return self

    def all_designs(self) -> list[Design]:
        return self.designs + (MEAN_BASELINES if self.include_mean_baselines else [])

    def model_config_for(self, design: Design) -> ModelConfig:
        return self.base.model_copy(update={"pooling": design.pooling, "attention": design.attention,
                                            "pooling_kwargs": design.pooling_kwargs})

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "ExperimentConfig":
        from .training import apply_overrides

        raw = yaml.safe_load(Path(path).read_text()) or {}
        return cls.model_validate(apply_overrides(raw, overrides or []))
