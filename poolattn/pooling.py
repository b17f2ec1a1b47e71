"""Pooling modules: hidden states -> one vector per text. A registry, so a design names its pooler in config.

Every pooler takes `hidden_states` (the backbone's tuple: input embeddings, then one tensor per layer, each
[batch, tokens, hidden]) and the [batch, tokens] attention mask, which may be left- or right-padded.
Trainable poolers compute in their parameters' dtype (float32 unless cast), whatever the backbone's dtype.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    """The base of every pooler: `forward(hidden_states, mask)` -> [batch, output_dim] float vectors. A subclass sets
    `name` (its key in POOLERS, the name a design's `pooling` gives), sets `needs_all_layers` if it reads layers
    other than the last, and returns from `get_config` the options that rebuild it (saved beside its weights).

    Args:
        hidden_size: the backbone's hidden size (the width of every hidden state, and the default output_dim).
        num_layers: the backbone's number of decoder layers (hidden_states then holds num_layers + 1 tensors).
        **options: the pooler's own options (a design's `pooling_kwargs`); the base class takes none, and an
            unknown option is an error that names it.
    """
    name: str = ""
    needs_all_layers = False  # True: forward needs every layer's hidden states
    trainable = False  # True: the pooler has weights (trained with the design; random until then)

    def __init__(self, hidden_size: int, num_layers: int, **options: Any):
        super().__init__()
        if options:
            raise ValueError(f"pooling {self.name!r} takes no options {sorted(options)}")
        self.hidden_size, self.num_layers = hidden_size, num_layers

    def get_config(self) -> dict[str, Any]:
        return {}

    def _check_all_layers(self, hidden_states: Sequence[torch.Tensor]) -> None:
        """A pooler that reads chosen layers needs the embeddings and every layer's states."""
        if len(hidden_states) != self.num_layers + 1:
            raise ValueError(f"{self.name} pooling expects {self.num_layers + 1} hidden states (embeddings + "
                             f"{self.num_layers} layers), got {len(hidden_states)}")

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
    """Masked token mean of the last layer; with `layers` (as select_layers: [1] = the first decoder layer, "1..11"
    = layers 1 to 11, 0 = the input embeddings, "last:4", ...), the mean over those layers of each one's masked token
    mean. An untrained decoder's early layers can embed far better than its last (`poolattn layers`; measured:
    docs/results.md#figures-behind-config-comments). Without `layers` it is the plain last-layer mean, unchanged."""
    name = "mean"

    def __init__(self, hidden_size: int, num_layers: int, layers: str | int | Sequence[int] | None = None):
        super().__init__(hidden_size, num_layers)
        self.layers = None if layers is None else select_layers(layers, num_layers)
        self.spec = list(layers) if isinstance(layers, (list, tuple)) else layers
        self.needs_all_layers = self.layers is not None

    def get_config(self) -> dict[str, Any]:
        return {} if self.spec is None else {"layers": self.spec}

    def forward(self, hidden_states, mask):
        if self.layers is None:
            return masked_mean(hidden_states[-1].float(), mask)
        self._check_all_layers(hidden_states)
        return torch.stack([masked_mean(hidden_states[i], mask) for i in self.layers]).mean(0)


class WeightedMeanPooling(Pooler):
    """Position-weighted mean (SGPT, LLM2Vec): later tokens have seen more of the text under causal attention."""
    name = "weighted_mean"

    def forward(self, hidden_states, mask):
        weights = (mask.cumsum(1) * mask).float()  # 1..n over the real tokens, whatever the padding side
        weights = weights / weights.sum(1, keepdim=True).clamp(min=1.0)
        return (hidden_states[-1].float() * weights.unsqueeze(-1)).sum(1)


class CrossAttention(nn.Module):
    """Multi-head cross-attention, pre-norm on both sides: the block both trainable poolers are built on.

    Head count and head width are free (inner width = heads x head width, as in the reference code, whose heads are
    wider than the model). Written out rather than nn.MultiheadAttention because one side may be a shared latent
    array: passed as a 2-D tensor, its norm and projection are computed once per batch instead of once per text.
    `key_mask` ([B, T] bool, True = attend) hides padding (and pool-masked tokens) from the queries.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, out_bias: bool = True, dropout: float = 0.0):
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads, self.dropout = num_heads, dropout
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=out_bias)

    def _heads(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        if x.dim() == 2:  # shared across the batch
            x = x.unsqueeze(0).expand(batch, -1, -1)
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0] if x.dim() == 3 else context.shape[0]
        q = self._heads(self.to_q(self.norm_q(x)), batch)
        k, v = (self._heads(t, batch) for t in self.to_kv(self.norm_kv(context)).chunk(2, dim=-1))
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
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


# Presets: the options that make each family's pooler what its authors' code builds. `head_dim: None` is a rule
# applied to the backbone's hidden size h (see _head_dim); every other option may be overridden one by one.
PRESETS: dict[str, dict[str, Any]] = {
    # Tang & Yang 2024, github.com/yixuantt/PoolingAndAttn @57791d5, pooling_layers/*TrainablePooling.py:
    # PerceiverResampler(num_latents_value=768, num_cross_heads=32, cross_dim_head=2048) at Mistral-7B (h=4096);
    # latents are the queries (`q = to_q(context)` with context = the latents), the residual adds the latents,
    # FeedForward(mult=4), to_out without bias, latents and layer embedding N(0, 1) (torch.randn, nn.Embedding).
    "tang2024": dict(query="latents", num_latents=768, num_heads=32, head_dim=None, residual=True, ff_mult=4,
                     out_bias=False, init_std=1.0),
    # NV-Embed (Lee et al. 2024), LatentAttentionModel: tokens are the queries, 512 latents give keys and values,
    # 8 heads of width 4096 = h, residual from the tokens, FeedForward(mult=4), masked mean over tokens.
    "nvembed": dict(query="tokens", num_latents=512, num_heads=8, head_dim=None, residual=True, ff_mult=4,
                    out_bias=False, init_std=1.0),
    # poolattn 0.1's own poolers (before the presets existed), kept so that its designs and folders stay reproducible.
    "poolattn0": dict(query="latents", num_latents=16, num_heads=8, head_dim=None, residual=False, ff_mult=2,
                      out_bias=True, init_std=0.02),
}


def _head_dim(preset: str, hidden_size: int, num_heads: int) -> int:
    """The head-width rule when `head_dim` is not given.

    tang2024: head width h/2 (2048 at Mistral-7B's 4096: the reference's inner width 32 x 2048 = 16 h). Keeping that
    ratio, rather than 2048-wide heads on a 576-wide model (an inner width of 114 h), gives a small backbone the same
    pooler shape relative to its width that the paper gave Mistral-7B. nvembed: width h (4096 at h = 4096).
    poolattn0: h / heads (an ordinary multi-head layer).
    """
    if preset == "tang2024":
        return max(1, hidden_size // 2)
    if preset == "nvembed":
        return hidden_size
    if hidden_size % num_heads:
        raise ValueError(f"hidden size {hidden_size} is not divisible by num_heads={num_heads}")
    return hidden_size // num_heads


class LatentBlock(nn.Module):
    """Trainable latents + cross-attention + feed-forward, in either family's orientation.

    query="latents" (Tang & Yang, Perceiver): the latents attend over the context tokens (keys/values), the
    residual (if on) adds the latents, a feed-forward with residual follows, and the latents are averaged.
    query="tokens" (NV-Embed): every token attends over the latents (keys/values), the residual adds the token,
    a feed-forward with residual follows, and the tokens are averaged under the mask.
    """

    def __init__(self, dim: int, query: str, num_latents: int, num_heads: int, head_dim: int, residual: bool,
                 ff_mult: int, out_bias: bool, init_std: float, dropout: float = 0.0):
        super().__init__()
        if query not in ("latents", "tokens"):
            raise ValueError(f"query must be 'latents' or 'tokens', got {query!r}")
        self.query, self.residual = query, residual
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * init_std)
        self.cross = CrossAttention(dim, num_heads, head_dim, out_bias, dropout)
        self.ff = FeedForward(dim, ff_mult, dropout)

    @torch.no_grad()
    def init_as_mean(self) -> None:
        """Start as the mean of the context vectors, each standardised by the block's pre-norm: zero latents
        give every context vector the same attention weight, the value and output projections pass the normalised
        context through, and the feed-forward's zero output projection adds nothing. Training moves on from
        there instead of from a random function of the backbone's states (a poolattn option, not the paper's)."""
        if self.query != "latents":
            raise ValueError("init 'mean' needs query='latents'")
        dim, inner = self.latents.shape[1], self.cross.to_out.in_features
        if inner < dim:
            raise ValueError(f"init 'mean' needs an inner width (heads x head_dim = {inner}) of at least {dim}")
        eye = torch.eye(dim, dtype=self.latents.dtype, device=self.latents.device)
        self.latents.zero_()
        values = self.cross.to_kv.weight[inner:]
        values.zero_()
        values[:dim].copy_(eye)
        self.cross.to_out.weight.zero_()
        self.cross.to_out.weight[:, :dim].copy_(eye)
        for layer in (self.cross.to_out, self.ff.proj_out):
            if layer.bias is not None:
                layer.bias.zero_()
        self.ff.proj_out.weight.zero_()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] context and its [B, T] mask -> [B, D]."""
        tokens = tokens.to(self.latents.dtype)
        if self.query == "latents":
            x = self.cross(self.latents, tokens, key_mask=mask)
            x = x + self.latents if self.residual else x
            x = x + self.ff(x)
            return F.normalize(x.mean(1), dim=-1)  # both reference codes L2-normalise their pooler's output
        x = self.cross(tokens, self.latents)
        x = x + tokens if self.residual else x
        x = x + self.ff(x)
        return F.normalize(masked_mean(x, mask), dim=-1).to(x.dtype)


class TrainablePooler(Pooler):
    """Shared option handling of the two trainable poolers: a preset, then any option overridden by name."""
    trainable = True
    defaults: dict[str, Any] = {}

    def __init__(self, hidden_size: int, num_layers: int, preset: str = "tang2024", **options: Any):
        Pooler.__init__(self, hidden_size, num_layers)
        init = options.pop("init", "random")  # "mean": LatentBlock.init_as_mean (a poolattn option)
        if init not in ("random", "mean"):
            raise ValueError(f"init must be 'random' (the preset's) or 'mean', got {init!r}")
        if preset not in PRESETS:
            raise ValueError(f"unknown pooler preset {preset!r}; valid: {', '.join(PRESETS)}")
        valid = {*PRESETS[preset], *self.defaults, "dropout"}
        bad = sorted(set(options) - valid)
        if bad:
            raise ValueError(f"pooling {self.name!r} takes no options {bad}; valid: {', '.join(sorted(valid))}")
        opts = {**PRESETS[preset], **self.defaults, "dropout": 0.0, **options}
        if opts["head_dim"] is None:
            opts["head_dim"] = _head_dim(preset, hidden_size, opts["num_heads"])
        self.preset, self.options = preset, opts
        block = ("query", "num_latents", "num_heads", "head_dim", "residual", "ff_mult", "out_bias", "init_std",
                 "dropout")
        self.block = LatentBlock(hidden_size, **{k: opts[k] for k in block})
        if init == "mean":
            self.block.init_as_mean()
            opts["init"] = "mean"

    def get_config(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.options}

    @property
    def latents(self) -> nn.Parameter:
        return self.block.latents


class LatentPooling(TrainablePooler):
    """Last-layer trainable pooling: the latent block over the last layer's tokens.

    tokens="last": only the last (EOS) token enters (the paper's design 2: one key, so the attention is trivial and
    the block is an MLP on the EOS state); tokens="all": every token enters (design 4; NV-Embed). Unlike the
    reference code, which passes no padding mask to its pooler, padding (and pool-masked instruction tokens) never
    enters here, so a text gives the same vector padded or alone.
    """
    name = "latent"
    defaults = {"tokens": "all"}

    def __init__(self, hidden_size: int, num_layers: int, preset: str = "tang2024", **options: Any):
        super().__init__(hidden_size, num_layers, preset, **options)
        if self.options["tokens"] not in ("last", "all"):
            raise ValueError(f"latent pooling: tokens must be 'last' or 'all', got {self.options['tokens']!r}")

    def forward(self, hidden_states, mask):
        h = hidden_states[-1]
        if self.options["tokens"] == "last":
            rows = torch.arange(h.shape[0], device=h.device)
            h, mask = h[rows, last_token_index(mask)].unsqueeze(1), mask.new_ones(h.shape[0], 1)
        return self.block(h, mask)


def select_layers(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Indices into hidden_states (0 = the input embeddings, 1 = the first decoder layer, ..., num_layers = the last;
    negatives count from the end as in Python: -1 = the last layer). 'all' (1..num_layers) | 'last:K' | K (the last
    K) | 'A..B' (A to B, both included: '1..8', '-4..-1') | a list of indices."""
    if spec == "all":
        return list(range(1, num_layers + 1))
    if isinstance(spec, str) and spec.startswith("last:"):
        spec = int(spec.split(":", 1)[1])
    if isinstance(spec, int):
        if not 1 <= spec <= num_layers:
            raise ValueError(f"layers: last {spec} of {num_layers} layers is out of range")
        return list(range(num_layers - spec + 1, num_layers + 1))
    ends = spec.split("..") if isinstance(spec, str) else []
    if isinstance(spec, str) and (len(ends) != 2 or not all(e.strip().lstrip("-").isdigit() for e in ends)):
        raise ValueError(f"layers: {spec!r} is not 'all', 'last:K', a range 'A..B' or a list of layer numbers")
    bounds = [int(e) for e in ends] if ends else list(spec)
    layers = [i if i >= 0 else num_layers + 1 + i for i in bounds]
    bad = [i for i, j in zip(bounds, layers) if not 0 <= j <= num_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or spec} out of range: the model has {num_layers} layers (0 = the embeddings, "
                         f"1..{num_layers} its layers, -1..-{num_layers + 1} the same counted from the end)")
    if ends:
        if layers[0] > layers[1]:
            raise ValueError(f"layers: range {spec!r} is empty ({layers[0]}..{layers[1]} on {num_layers} layers)")
        layers = list(range(layers[0], layers[1] + 1))
    return layers


class MultiLayerPooling(TrainablePooler):
    """Multi-Layers Trainable Pooling (Tang & Yang 2024).

    Each selected layer gives one vector (tokens="last": its last-token state, the paper's design 3; "mean": its
    masked token mean, design 5); a learned layer embedding marks which layer it is; the latent block runs over
    those layer vectors (with query="latents", the paper's: latents attend over the layers and are averaged).
    """
    name = "multilayer"
    needs_all_layers = True
    defaults = {"tokens": "mean", "layers": "all", "layer_embedding": True}

    def __init__(self, hidden_size: int, num_layers: int, preset: str = "tang2024", **options: Any):
        if options.get("query") == "tokens" or (preset == "nvembed" and "query" not in options):
            raise ValueError("multilayer pooling: the layer vectors are the context; use query='latents'")
        super().__init__(hidden_size, num_layers, preset, **options)
        opts = self.options
        if opts["tokens"] not in ("last", "mean"):
            raise ValueError(f"multilayer pooling: tokens must be 'last' or 'mean', got {opts['tokens']!r}")
        self.layers = select_layers(opts["layers"], num_layers)
        if not isinstance(opts["layers"], (str, int)):
            opts["layers"] = list(opts["layers"])
        self.layer_embedding = nn.Embedding(len(self.layers), hidden_size) if opts["layer_embedding"] else None
        if self.layer_embedding is not None:
            nn.init.normal_(self.layer_embedding.weight, std=0.0 if opts.get("init") == "mean" else opts["init_std"])

    def forward(self, hidden_states, mask):
        self._check_all_layers(hidden_states)
        if self.options["tokens"] == "last":
            rows, last = torch.arange(mask.shape[0], device=mask.device), last_token_index(mask)
            vectors = torch.stack([hidden_states[i][rows, last].float() for i in self.layers], dim=1)
        else:
            vectors = torch.stack([masked_mean(hidden_states[i], mask) for i in self.layers], dim=1)
        vectors = vectors.to(self.latents.dtype)
        if self.layer_embedding is not None:
            vectors = vectors + self.layer_embedding.weight.unsqueeze(0)
        return self.block(vectors, mask.new_ones(vectors.shape[:2]))


POOLERS: dict[str, type[Pooler]] = {cls.name: cls for cls in
                                    (EOSPooling, MeanPooling, WeightedMeanPooling, LatentPooling, MultiLayerPooling)}


def check_pooling_name(name: str) -> str:
    if name not in POOLERS:
        raise ValueError(f"unknown pooling {name!r}; valid: {', '.join(POOLERS)}")
    return name


def is_trainable(name: str) -> bool:
    """Whether the registered pooling `name` has weights to train (its class's `trainable`)."""
    return POOLERS[check_pooling_name(name)].trainable


def build_pooler(name: str, hidden_size: int, num_layers: int, **options: Any) -> Pooler:
    cls = POOLERS[check_pooling_name(name)]
    try:
        return cls(hidden_size, num_layers, **options)
    except TypeError as err:
        raise ValueError(f"bad options for pooling {name!r}: {err}") from err
