"""Command line: thin typer wrappers over the library; every command's work lives in its own module."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decoder LLMs as text-embedding models: design, train, evaluate, compare.")

# --- encode/info commands (core) ---
def _load_model(model: str, attention: str | None, pooling: str | None, dtype: str | None, max_length: int | None):
    """A saved poolattn folder as saved (options override it), else a fresh design on that backbone."""
    from pathlib import Path

    from .model import CONFIG_NAME, EmbeddingModel, ModelConfig

    overrides = {k: v for k, v in dict(attention=attention, pooling=pooling, dtype=dtype,
                                       max_length=max_length).items() if v is not None}
    if (Path(model) / CONFIG_NAME).exists():
        return EmbeddingModel.from_pretrained(model, **overrides)
    return EmbeddingModel(ModelConfig(backbone=model, **overrides))


@app.command()
def encode(
    input: str = typer.Option(..., "--input", "-i", help="text file, one text per line"),
    output: str = typer.Option(..., "--output", "-o", help=".npy file to write (float32 [N, D])"),
    model: str = typer.Option("smollm2-135m", help="saved poolattn folder, backbone alias, local HF folder, GGUF or hub id"),
    attention: str = typer.Option(None, help="causal | bidirectional (default: as saved, else causal)"),
    pooling: str = typer.Option(None, help="eos | mean | weighted_mean | latent | multilayer (default: as saved, else eos)"),
    instruction: str = typer.Option(None, help="task instruction prefixed to every text"),
    batch_size: int = typer.Option(32),
    max_length: int = typer.Option(None),
    dtype: str = typer.Option(None, help="auto | float32 | bfloat16"),
):
    """Embed the lines of a text file."""
    from pathlib import Path

    import numpy as np
    from rich import print as rprint

    texts = Path(input).read_text(encoding="utf-8").splitlines()
    m = _load_model(model, attention, pooling, dtype, max_length)
    emb = m.encode(texts, instruction=instruction, batch_size=batch_size, show_progress_bar=True)
    np.save(output, emb)
    rprint(f"[green]{emb.shape[0]} x {emb.shape[1]}[/green] embeddings ({m.config.name}) -> {output}")


@app.command()
def info(folder: str = typer.Argument(..., help="saved poolattn model folder")):
    """Show a saved model's design, adapter and pooler."""
    import json
    from pathlib import Path

    from rich import print as rprint

    from .model import CONFIG_NAME

    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise typer.BadParameter(f"{folder} is not a poolattn model folder (no {CONFIG_NAME})")
    meta = json.loads(path.read_text())
    cfg = meta["config"]
    rprint(f"[bold]{folder}[/bold]  poolattn {meta.get('poolattn_version')}")
    rprint(f"  backbone   {cfg['backbone']}  ({cfg['dtype']}, max_length {cfg['max_length']})")
    rprint(f"  design     pooling={cfg['pooling']}  attention={cfg['attention']}  normalize={cfg['normalize']}")
    rprint(f"  pooler     {meta['pooler']}")
    rprint(f"  lora       {cfg['lora'] or 'none'}{'  (full fine-tune)' if cfg.get('full_finetune') else ''}")
    rprint(f"  dim        {meta['embedding_dim']}")
    rprint(f"  files      {', '.join(sorted(p.name for p in Path(folder).iterdir()))}")


# --- train command (trainer) ---

# --- eval command (evaluation) ---

# --- report command (report) ---

# --- experiment/layers commands (experiment) ---


if __name__ == "__main__":
    app()
