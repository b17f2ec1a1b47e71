"""What several commands share: option help texts, option callbacks that refuse a bad value before any model
loads, and how a command line's --model/--pooling/--attention become an EmbeddingModel. Used by poolattn.cli and
the commands that live beside their library code (serve/cli.py, export/cli.py), so none imports another's privates.
"""
from __future__ import annotations

import typer

from .errors import UserError


def check_model_spec(value: str | None) -> str | None:
    """--model callback: a folder must hold a model (saved poolattn, sentence-transformers or HF); else one line."""
    from pathlib import Path

    folder = Path(value).expanduser() if value else None
    if folder is not None and folder.is_dir() and not any(
            (folder / f).exists() for f in ("poolattn_config.json", "modules.json", "config.json")) and not any(
            folder.glob("*.gguf")):
        raise typer.BadParameter(f"{value} is a folder without a model (no poolattn_config.json, config.json, "
                                 f"modules.json or .gguf)", param_hint="--model")
    return value

DEVICE_HELP = "auto (this process's GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "auto | float32 | bfloat16 | float16"
DATA_HELP = "data pack folder (default: $POOLATTN_DATA, else ../shared/data)"
PREFIX_REUSE_HELP = ("run the instruction all texts of a batch share once per batch under causal attention (exact up "
                     "to rounding); --no-prefix-reuse: every text whole")
FUSE_LORA_HELP = ("run each LoRA linear of a trained model as one matrix product (the same vectors up to rounding); "
                  "--no-fuse-lora: peft's unfused path")


def checked_by(module: str, resolver: str, hint: str):
    """An option callback: poolattn.<module>.<resolver>(value) raising ValueError (an unknown device or dtype, with
    the valid ones) is a one-line usage error, before any model loads."""
    def check(value: str | None) -> str | None:
        if value is not None:
            import importlib

            try:
                getattr(importlib.import_module(f"{__package__}.{module}"), resolver)(value)
            except ValueError as err:
                raise typer.BadParameter(str(err), param_hint=hint) from err
        return value
    return check


check_device = checked_by("device", "resolve_device", "--device")
check_dtype = checked_by("backbone", "resolve_dtype", "--dtype")



def load_model_for_cli(model: str, attention: str | None, pooling: str | None, dtype: str | None, max_length: int | None,
                device: str = "auto", fuse_lora: bool = True):
    """A saved poolattn folder as saved (options override it), else a fresh design on that backbone: then a
    trainable pooler starts random, and a warning says so. --max-length beyond the model's positions is refused."""
    from pathlib import Path

    from rich.console import Console

    from .model import CONFIG_NAME, EmbeddingModel, ModelConfig

    overrides = {k: v for k, v in dict(attention=attention, pooling=pooling, dtype=dtype,
                                       max_length=max_length).items() if v is not None}
    if (Path(model) / CONFIG_NAME).exists():
        m = EmbeddingModel.from_pretrained(model, inference=True, device=device, fuse_lora=fuse_lora,
                                           **overrides)  # inference only
    else:
        m = EmbeddingModel(ModelConfig(backbone=model, **overrides), device=device)
        if m.pooler.trainable:
            Console(stderr=True).print(f"[yellow]warning[/yellow]: {m.config.pooling} pooling on the plain backbone "
                                       f"{model}: its pooler is untrained (random weights), so the embeddings are "
                                       f"not meaningful; train the design first (poolattn train)", soft_wrap=True)
    positions = getattr(m.backbone.config, "max_position_embeddings", None)
    if max_length is not None and positions is not None and max_length > positions:
        raise UserError(f"--max-length {max_length}: the model {model} takes at most {positions} tokens "
                        f"(max_position_embeddings)", 2)
    return m
