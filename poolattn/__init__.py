"""poolattn: decoder LLMs as text-embedding models, and controlled experiments on their pooling and attention."""
from __future__ import annotations

import importlib

from .version import __version__

# Imported on first use (PEP 562), so that `import poolattn.allocator` by the command's entry point loads no torch:
# the entry point may execute the process again (poolattn.allocator), and a torch loaded before that is time lost.
_EXPORTS = {"EmbeddingModel": ".model", "ModelConfig": ".modelconfig", "LoraSettings": ".modelconfig",
            "POOLERS": ".pooling"}

__all__ = ["EmbeddingModel", "ModelConfig", "LoraSettings", "POOLERS", "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'poolattn' has no attribute {name!r}")
