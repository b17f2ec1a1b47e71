"""The `poolattn export` command (registered in poolattn/cli.py)."""
from __future__ import annotations

import typer


def export_command(
    model: str = typer.Argument(..., help="saved poolattn model folder"),
    out: str = typer.Argument(..., help="folder to write (replaced whole once complete)"),
    format: str = typer.Option("sentence-transformers", "--format", "-f",
                               help="sentence-transformers (every design; loads with trust_remote_code=True) | hf "
                                    "(merged transformers folder for eos/mean designs: TEI, vLLM)"),
    dtype: str = typer.Option("float32", help="weights of the export: float32 | bfloat16 | float16"),
    eval_dir: str = typer.Option(None, "--eval", help="`poolattn eval` output whose summary goes into the model card"),
):
    """Export a trained model for sentence-transformers, mteb and embedding servers."""
    from rich import print as rprint

    from ..fileio import check_not_input
    from . import export_model

    check_not_input(out, {"MODEL folder": model, "--eval folder": eval_dir}, "OUT", replaced_whole=True)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"unknown dtype {dtype!r}; valid: float32, bfloat16, float16", param_hint="--dtype")
    try:
        info = export_model(model, out, format, dtype=dtype, eval_dir=eval_dir)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from err
    merged = "" if info["merge_min_cos"] is None else f" (LoRA merged: min cos {info['merge_min_cos']:.7f})"
    rprint(f"[green]{format}[/green] export -> {info['out']}{merged}")
