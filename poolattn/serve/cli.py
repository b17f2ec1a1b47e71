"""The `poolattn serve` command (registered in poolattn/cli.py); every option is a ServeSettings field."""
from __future__ import annotations

import typer

from .schemas import ServeSettings

_F = ServeSettings.model_fields
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def _check_address(host: str, port: int) -> None:
    """Bind (host, port) once before the model loads: an unknown host or a port in use is one line, not a traceback
    after minutes of loading."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise typer.BadParameter(f"{host}: {err.strerror}", param_hint="--host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise typer.BadParameter(f"cannot listen on {host}:{port}: {err.strerror}", param_hint="--port") from None


def _help(name: str) -> str:
    return _F[name].description or ""


def serve_command(
    model: str = typer.Argument(..., help="saved poolattn folder, backbone alias, local HF folder, GGUF or hub id"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port to listen on (0: any free port)"),
    served_model_name: str = typer.Option(None, help="the `model` clients send (default: the folder's name or the "
                                                     "backbone spec)"),
    api_key: str = typer.Option(None, envvar="POOLATTN_API_KEY", help=_help("api_key")),
    max_inputs: int = typer.Option(_F["max_inputs"].default, help=_help("max_inputs")),
    max_input_tokens: int = typer.Option(None, help=_help("max_input_tokens")),
    truncate: bool = typer.Option(False, "--truncate/--no-truncate", help=_help("truncate")),
    max_body_bytes: int = typer.Option(_F["max_body_bytes"].default, help=_help("max_body_bytes")),
    batch_tokens: int = typer.Option(None, help=_help("batch_tokens")),
    max_batch_size: int = typer.Option(None, help=_help("max_batch_size")),
    max_queue: int = typer.Option(_F["max_queue"].default, help=_help("max_queue")),
    batch_wait_ms: float = typer.Option(_F["batch_wait_ms"].default, help=_help("batch_wait_ms")),
    gil_switch_ms: float = typer.Option(_F["gil_switch_ms"].default, help=_help("gil_switch_ms")),
    instruction: str = typer.Option(None, help=_help("instruction")),
    graceful_shutdown_s: float = typer.Option(_F["graceful_shutdown_s"].default, help=_help("graceful_shutdown_s")),
    pooling: str = typer.Option(None, help="design of a fresh model on a backbone (default eos)"),
    attention: str = typer.Option(None, help="causal | bidirectional (default: as saved, else causal)"),
    dtype: str = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    device: str = typer.Option("auto", help="auto (this process's GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps"),
    log_level: str = typer.Option("info", help=" | ".join(LOG_LEVELS)),
):
    """Serve a model behind an OpenAI-compatible POST /v1/embeddings (plus /v1/models, /health, /metrics)."""
    import os
    from pathlib import Path

    # Requests are tokenized on worker threads while the inference thread runs torch's intra-op threads: the
    # tokenizers library's own thread pool on top oversubscribes the cores and stalls torch's threads.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from pydantic import ValidationError

    from ..cli_options import check_device, check_dtype, load_model_for_cli
    from . import serve

    check_device(device)
    check_dtype(dtype)
    if log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"unknown log level {log_level!r}; valid: {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    _check_address(host, port)
    name = served_model_name or (Path(model).name if Path(model).is_dir() else model)
    try:
        settings = ServeSettings(model_name=name, api_key=api_key, max_inputs=max_inputs,
                                 max_input_tokens=max_input_tokens, truncate=truncate, max_body_bytes=max_body_bytes,
                                 batch_tokens=batch_tokens, max_batch_size=max_batch_size, max_queue=max_queue,
                                 batch_wait_ms=batch_wait_ms, gil_switch_ms=gil_switch_ms, instruction=instruction,
                                 graceful_shutdown_s=graceful_shutdown_s)
    except ValidationError as err:
        raise typer.BadParameter("; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}"
                                           for e in err.errors())) from err
    m = load_model_for_cli(model, attention, pooling, dtype, None, device)
    try:
        serve(m, settings, host=host, port=port, log_level=log_level)
    except ValueError as err:  # settings that do not fit the model (e.g. --max-input-tokens above max_length)
        raise typer.BadParameter(str(err)) from err
