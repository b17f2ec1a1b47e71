"""Public classes document their arguments: config fields carry their help as `Field(description=...)`, which the
class docstring's generated `Args:` section shows; EmbeddingModel and Pooler list their constructor's arguments."""
from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel, Field

from poolattn import EmbeddingModel
from poolattn.configdoc import documented
from poolattn.experiment.config import EvalSettings, ExperimentConfig, ReportSettings
from poolattn.modelconfig import LoraSettings, ModelConfig
from poolattn.pooling import Pooler
from poolattn.training import TrainConfig

CONFIGS = [ModelConfig, LoraSettings, TrainConfig, ExperimentConfig, EvalSettings, ReportSettings]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_has_help_and_the_docstring_shows_it(cls):
    doc = inspect.getdoc(cls)
    summary, args = doc.split("\nArgs:\n")
    assert summary.strip() and "Args:" not in args
    entries = " ".join(args.split())  # unwrapped
    for name, field in cls.model_fields.items():
        assert field.description, f"{cls.__name__}.{name} has no description"
        assert f"{name} (" in entries and " ".join(field.description.split()) in entries, name


def test_a_field_without_help_fails_at_import():
    with pytest.raises(TypeError, match="Knobs.volume has no description"):
        @documented
        class Knobs(BaseModel):
            """Knobs."""
            gain: int = Field(1, description="how loud")
            volume: int = 2


@pytest.mark.parametrize("cls", [EmbeddingModel, Pooler], ids=lambda c: c.__name__)
def test_constructor_arguments_are_documented(cls):
    doc = inspect.getdoc(cls)
    assert "\nArgs:\n" in doc
    args = doc.split("\nArgs:\n")[1]
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name != "self":
            stars = "**" if param.kind is param.VAR_KEYWORD else ""
            assert f"\n    {stars}{name}: " in "\n" + args, name
