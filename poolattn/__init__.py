"""poolattn: decoder LLMs as text-embedding models, and controlled experiments on their pooling and attention."""

from .model import EmbeddingModel
from .modelconfig import LoraSettings, ModelConfig
from .pooling import POOLERS
from .version import __version__

__all__ = ["EmbeddingModel", "ModelConfig", "LoraSettings", "POOLERS", "__version__"]
