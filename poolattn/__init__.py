"""poolattn: decoder LLMs as text-embedding models, and controlled experiments on their pooling and attention."""
__version__ = "0.1.0"

from .model import EmbeddingModel, LoraSettings, ModelConfig  # noqa: E402
from .pooling import POOLERS  # noqa: E402

__all__ = ["EmbeddingModel", "ModelConfig", "LoraSettings", "POOLERS", "__version__"]
