"""sentence-transformers module of a poolattn trainable pooler (latent or multilayer attention pooling).

Written by `poolattn export` into the exported folder as `poolattn_pooler.py`, next to a verbatim copy of poolattn's
`pooling.py`; both need only torch, safetensors and sentence-transformers, so the folder loads without poolattn:
SentenceTransformer(folder, trust_remote_code=True).
"""
from __future__ import annotations

from typing import Any

import torch
from sentence_transformers.models import Module

from .pooling import build_pooler


class PoolattnPooler(Module):
    """Feeds the backbone's hidden states (embeddings + one per layer when the pooler needs them, else the last
    layer) and the mask to the pooler; `mask_prompt` leaves the prompt (instruction) tokens out of pooling, or
    under echo (poolattn_echo.py) all but the second copy's."""
    config_keys = ["pooling", "hidden_size", "num_layers", "options", "mask_prompt"]

    def __init__(self, pooling: str, hidden_size: int, num_layers: int, options: dict[str, Any] | None = None,
                 mask_prompt: bool = False):
        super().__init__()
        self.pooling, self.hidden_size, self.num_layers = pooling, hidden_size, num_layers
        self.options, self.mask_prompt = dict(options or {}), mask_prompt
        self.pooler = build_pooler(pooling, hidden_size, num_layers, **self.options)

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        mask = features["attention_mask"]
        if self.pooler.needs_all_layers:
            if "all_layer_embeddings" not in features:
                raise ValueError("the backbone config needs output_hidden_states: true for this pooler")
            states = tuple(features["all_layer_embeddings"])
        else:
            states = (features["token_embeddings"],)
        pool = mask
        if self.mask_prompt and features.get("prompt_length") is not None:
            # One length for the batch (a sentence-transformers prompt) or one per text (poolattn_echo's).
            n = torch.as_tensor(features["prompt_length"], device=mask.device).reshape(-1, 1)
            n = n if n.shape[0] == mask.shape[0] else n[:1]
            real = mask.long().cumsum(1)  # 1.. over the real tokens, whatever the padding side
            pool = mask * (real > n).to(mask.dtype)
        features["sentence_embedding"] = self.pooler(states, pool).float()
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.pooler.output_dim

    def get_embedding_dimension(self) -> int:
        return self.pooler.output_dim

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs) -> PoolattnPooler:
        hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision,
                   local_files_only=local_files_only)
        module = cls(**cls.load_config(model_name_or_path, **hub))
        return cls.load_torch_weights(model_name_or_path, model=module, **hub)
