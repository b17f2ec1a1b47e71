"""`poolattn serve`: an OpenAI-compatible /v1/embeddings server with dynamic batching (see app.py)."""
from __future__ import annotations

from .app import create_app
from .schemas import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]


def serve(model, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
          log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM; requests in flight finish (up to settings.graceful_shutdown_s)."""
    import uvicorn

    uvicorn.run(create_app(model, settings), host=host, port=port, log_level=log_level,
                log_config=log_config(log_level), timeout_graceful_shutdown=settings.graceful_shutdown_s)


def log_config(log_level: str) -> dict:
    """uvicorn's logging config with poolattn's server messages (the widths served at startup, untrained
    `dimensions`, errors) printed beside uvicorn's own, in its format and at `log_level`."""
    import copy

    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["poolattn.serve"] = {"handlers": ["default"], "level": LOG_LEVELS[log_level], "propagate": False}
    return config
