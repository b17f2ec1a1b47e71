"""Pooling modules: hidden states -> one vector per text. A registry, so a design names its pooler in config.

Every pooler takes `hidden_states` (the backbone's tuple: input embeddings, then one tensor per layer, each
[batch, tokens, hidden]) and the [batch, tokens] attention mask, which may be left- or right-padded.
Trainable poolers compute in their parameters' dtype (float32 unless cast), whatever the backbone's dtype.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, D], [B, T] -> [B, D] float32 (bf16 sums lose digits); an all-pad row gives zeros rather than NaN."""
    m = mask.float().unsqueeze(-1)
    return (x.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row, for left and right padding alike."""
    T = mask.shape[1]
    return T - 1 - mask.flip(1).to(torch.long).argmax(1)


class Pooler(nn.Module):
    name: str = ""
    needs_all_layers = False  # True: forward needs every layer's hidden states

    def __init__(self, hidden_size: int, num_layers: int, **options: Any):
        super().__init__()
        if options:
            raise ValueError(f"pooling {self.name!r} takes no options {sorted(options)}")
        self.hidden_size, self.num_layers = hidden_size, num_layers

    def get_config(self) -> dict[str, Any]:
        return {}

    @property
    def output_dim(self) -> int:
        return self.hidden_size


class EOSPooling(Pooler):
    """Last non-pad token of the last layer: the token that has seen the whole text under causal attention."""
    name = "eos"

    def forward(self, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        h = hidden_states[-1]
        return h[torch.arange(h.shape[0], device=h.device), last_token_index(mask)].float()


class MeanPooling(Pooler):
    name = "mean"

    def forward(self, hidden_states, mask):
        return masked_mean(hidden_states[-1].float(), mask)


class WeightedMeanPooling(Pooler):
    """Position-weighted mean (SGPT, LLM2Vec): later tokens have seen more of the text under causal attention."""
    name = "weighted_mean"

    def forward(self, hidden_states, mask):
        weights = (mask.cumsum(1) * mask).float()  # 1..n over the real tokens, whatever the padding side
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)
        return (hidden_states[-1].float() * weights.unsqueeze(-1)).sum(1)


class CrossAttention(nn.Module):
    """Multi-head cross-attention with pre-norm on both sides: the building block of both trainable poolers.

    Written out rather than nn.MultiheadAttention because one side is a shared latent array: passed as a 2-D
    tensor, its projection is computed once per batch instead of once per text.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        if x.dim() == 2:  # shared across the batch
            x = x.unsqueeze(0).expand(batch, -1, -1)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0] if x.dim() == 3 else context.shape[0]
        q = self._heads(self.to_q(self.norm_q(x)), batch)
        k, v = (self._heads(t, batch) for t in self.to_kv(self.norm_kv(context)).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """Pre-norm GEGLU feed-forward (Shazeer 2020), as in the paper's and NV-Embed's pooling blocks."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        a, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return self.proj_out(self.dropout(a * F.gelu(gate)))


class LatentAttentionPooling(Pooler):
    """Last-layer trainable pooling, NV-Embed's latent attention layer (Lee et al. 2024).

    The last layer's token states are queries; a trainable latent array gives keys and values; an MLP follows,
    both with residual connections; then a masked mean over tokens.
    """
    name = "latent"

    def __init__(self, hidden_size: int, num_layers: int, num_latents: int = 64, num_heads: int = 8,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__(hidden_size, num_layers)
        self.num_latents, self.num_heads, self.ff_mult, self.dropout = num_latents, num_heads, ff_mult, dropout
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) * hidden_size ** -0.5)
        self.cross = CrossAttention(hidden_size, hidden_size, num_heads, dropout)
        self.ff = GEGLU(hidden_size, ff_mult, dropout)

    def get_config(self):
        return {"num_latents": self.num_latents, "num_heads": self.num_heads, "ff_mult": self.ff_mult,
                "dropout": self.dropout}

    def forward(self, hidden_states, mask):
        h = hidden_states[-1].to(self.latents.dtype)
        x = h + self.cross(h, self.latents)
        x = x + self.ff(x)
        return masked_mean(x, mask).to(x.dtype)


def select_layers(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """'all' | 'last:K' | K (the last K) | list of layer numbers (1 = first decoder layer, negatives from the end)."""
    if spec == "all":
        return list(range(1, num_layers + 1))
    if isinstance(spec, str) and spec.startswith("last:"):
        spec = int(spec.split(":", 1)[1])
    if isinstance(spec, int):
        if not 1 <= spec <= num_layers:
            raise ValueError(f"layers: last {spec} of {num_layers} layers is out of range")
        return list(range(num_layers - spec + 1, num_layers + 1))
    if isinstance(spec, str):
        raise ValueError(f"layers: {spec!r} is not 'all', 'last:K' or a list of layer numbers")
    layers = [i if i > 0 else num_layers + 1 + i for i in spec]
    bad = [i for i, j in zip(spec, layers) if not 1 <= j <= num_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or spec} out of range 1..{num_layers} (negatives count from the end)")
    return layers


class MultiLayerPooling(Pooler):
    """Multi-Layers Trainable Pooling (Tang & Yang 2024).

    Each selected layer's masked token mean is one vector; a learned layer embedding marks which layer it is;
    trainable latent queries cross-attend over those layer vectors (keys and values); a GEGLU feed-forward with
    residual follows; the latents are averaged. Defaults are sized for small backbones (the reference code's 768
    latents and 32 heads of width 2048 were for Mistral-7B).
    """
    name = "multilayer"
    needs_all_layers = True

    def __init__(self, hidden_size: int, num_layers: int, layers: str | int | Sequence[int] = "all",
                 num_latents: int = 16, num_heads: int = 8, layer_embedding: bool = True, ff_mult: int = 2,
                 dropout: float = 0.0):
        super().__init__(hidden_size, num_layers)
        self.layers = select_layers(layers, num_layers)
        self.layers_spec = layers if isinstance(layers, (str, int)) else list(layers)
        self.num_latents, self.num_heads, self.ff_mult, self.dropout = num_latents, num_heads, ff_mult, dropout
        self.layer_embedding = nn.Embedding(len(self.layers), hidden_size) if layer_embedding else None
        if self.layer_embedding is not None:
            nn.init.normal_(self.layer_embedding.weight, std=0.02)
        # Small latents: the queries carry no input information, so large ones would only sharpen attention at random.
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size) * 0.02)
        self.cross = CrossAttention(hidden_size, hidden_size, num_heads, dropout)
        self.ff = GEGLU(hidden_size, ff_mult, dropout)

    def get_config(self):
        return {"layers": self.layers_spec, "num_latents": self.num_latents, "num_heads": self.num_heads,
                "layer_embedding": self.layer_embedding is not None, "ff_mult": self.ff_mult, "dropout": self.dropout}

    def forward(self, hidden_states, mask):
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(f"multilayer pooling expects {self.num_layers + 1} hidden states (embeddings + "
                             f"{self.num_layers} layers), got {len(hidden_states)}")
        vectors = torch.stack([masked_mean(hidden_states[i], mask) for i in self.layers], dim=1).to(self.latents.dtype)
        if self.layer_embedding is not None:
            vectors = vectors + self.layer_embedding.weight.unsqueeze(0)
        # No residual from the queries: they are input-independent and would add the same vector to every text.
        x = self.cross(self.latents, vectors)
        x = x + self.ff(x)
        return F.normalize(x.mean(1), dim=-1)


POOLERS: dict[str, type[Pooler]] = {cls.name: cls for cls in
                                    (EOSPooling, MeanPooling, WeightedMeanPooling, LatentAttentionPooling,
                                     MultiLayerPooling)}


def check_pooling_name(name: str) -> str:
    if name not in POOLERS:
        raise ValueError(f"unknown pooling {name!r}; valid: {', '.join(POOLERS)}")
    return name


def build_pooler(name: str, hidden_size: int, num_layers: int, **options: Any) -> Pooler:
    cls = POOLERS[check_pooling_name(name)]
    try:
        return cls(hidden_size, num_layers, **options)
    except TypeError as err:
        raise ValueError(f"bad options for pooling {name!r}: {err}") from err
