"""Command line: thin typer wrappers over the library; every command's work lives in its own module."""
from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decoder LLMs as text-embedding models: design, train, evaluate, compare.")

# --- encode/info commands (core) ---

# --- train command (trainer) ---

# --- eval command (evaluation) ---

# --- report command (report) ---

# --- experiment/layers commands (experiment) ---


if __name__ == "__main__":
    app()
