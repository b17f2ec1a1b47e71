"""Causal or bidirectional attention for any decoder built on transformers' masking utilities.

One generic switch instead of per-architecture model copies (as the paper's code and LLM2Vec ship): transformers'
`create_causal_mask` builds a bidirectional padding mask when `config.is_causal` is False, and the attention
modules' own `is_causal` flag decides SDPA/flash's implicit causal masking when no mask tensor is materialised.
"""
from __future__ import annotations

from torch import nn

MODES = ("causal", "bidirectional")


def set_attention(model: nn.Module, mode: str) -> nn.Module:
    if mode not in MODES:
        raise ValueError(f"unknown attention {mode!r}; valid: {', '.join(MODES)}")
    causal = mode == "causal"
    seen = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and id(config) not in seen and hasattr(config, "to_dict"):
            seen.add(id(config))
            config.is_causal = causal
            # Gemma-3-style configs carry their own switch; keep it consistent.
            if hasattr(config, "use_bidirectional_attention"):
                config.use_bidirectional_attention = not causal
        if hasattr(module, "is_causal") and isinstance(module.is_causal, bool):
            module.is_causal = causal
    return model


def get_attention(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return "causal" if getattr(config, "is_causal", True) else "bidirectional"
