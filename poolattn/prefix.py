"""Shared-prefix reuse: the leading tokens every text of a batch shares (an instruction) run once, not once per text.

Under causal attention a token's hidden states depend only on the tokens before it, so the states (and keys and
values) of a prefix that every row starts with are the same in every row: the prefix runs once (batch 1), its key/
value cache is shared by the batch, and the rest of each row runs after it with positions continuing where the
prefix ended. Every layer's states are then rebuilt as [prefix states shared by all rows, each row's own states]
along the tokens, so every pooler sees the states it sees without reuse (up to rounding). The prefix is found on
token ids, after tokenization, so BPE merges across the instruction/text boundary cannot make it inexact.

In training the prefix's keys/values are broadcast to the batch (expand), so its gradient flows back once, summed
over the rows. Under gradient checkpointing a layer runs again during backward, so the caches here are
idempotent: the prefix pass overwrites (never appends) what it stores, and the batch pass reads a copy.
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

MIN_SHARED_TOKENS = 4  # fewer shared tokens than this: one extra backbone call costs more than it saves


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Number of leading token ids every row of the batch shares, leaving each row at least one token of its own
    (its EOS); 0 for a single row, a prefix shorter than MIN_SHARED_TOKENS, or rows not all starting at column 0
    with a real token (left padding of unequal lengths)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0)
    n = min(int(same.long().cumprod(0).sum()), int(attention_mask.sum(1).min()) - 1)
    if n < MIN_SHARED_TOKENS or not bool(attention_mask[:, :n].all()):
        return 0
    return n


def _decoder_config(backbone):
    config = backbone.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def supported(backbone) -> bool:
    """Whether this backbone's cache can hold a shared prefix exactly: every layer full attention or a sliding
    window (Mistral, Gemma 2/3: the cache keeps the window's last tokens and the mask offsets them), and a
    transformers whose checkpointed layers can keep a cache (`_can_checkpoint_with_cache`, transformers 5.x).

    Falls back (False) on chunked attention (Llama 4: its chunks would have to line up with the prefix's end),
    linear-attention or recurrent layers and KV sharing (their cache layers hold state, not per-token keys), and
    older transformers, whose checkpointed layers drop a cache in training, which would silently cut each row off
    from its prefix."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return False
    if not hasattr(GradientCheckpointingLayer, "_can_checkpoint_with_cache"):
        return False
    config = _decoder_config(backbone)
    types = getattr(config, "layer_types", None) or []
    if set(types) - {"full_attention", "sliding_attention"} or getattr(config, "attention_chunk_size", None):
        return False
    layers = DynamicCache(config=config).layers
    return len(layers) == config.num_hidden_layers and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in layers)


def _cache_class():
    from transformers.cache_utils import DynamicCache

    class SharedPrefixCache(DynamicCache):
        """A DynamicCache (per-layer types from the config) that the prefix pass fills, and a read-only copy of it
        for the batch pass (two objects: a checkpointed prefix layer runs again after the batch pass, and must
        then find its own, writable cache)."""

        def __init__(self, config):
            super().__init__(config=config)
            self.read_only = False

        def for_batch(self, batch: int) -> SharedPrefixCache:
            """A read-only copy with the stored prefix broadcast to `batch` rows (a view: its gradient sums over
            the rows)."""
            out = copy.copy(self)
            out.layers = [copy.copy(layer) for layer in self.layers]
            for layer in out.layers:
                layer.keys = layer.keys.expand(batch, -1, -1, -1)
                layer.values = layer.values.expand(batch, -1, -1, -1)
            out.read_only = True
            return out

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]
            if self.read_only:  # the keys/values each layer's attention needs: prefix (or its window's end) + own
                return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)
            layer.reset()  # prefix pass: store afresh, so a checkpointed layer's second run stores the same
            return layer.update(key_states, value_states, *args, **kwargs)

    return SharedPrefixCache


def _cache_kwarg(backbone) -> str:
    """`cache` (transformers >= 5.x) or `past_key_values` (before): the base model's name for it."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@contextmanager
def _checkpointing_keeps_cache(backbone) -> Iterator[None]:
    """Let checkpointed layers keep the cache (they drop it otherwise): safe here, the cache being idempotent."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in backbone.modules() if isinstance(m, GradientCheckpointingLayer)]
    for m in layers:
        m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m in layers:
            del m._can_checkpoint_with_cache


def backbone_states(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                    all_layers: bool, cache=None) -> tuple[torch.Tensor, ...]:
    """Every layer's hidden states (embeddings first) when `all_layers`, else the last layer's alone.
    use_cache stays False: a cache given is used as it is, none is made (and none is asked of checkpointing)."""
    extra = {_cache_kwarg(backbone): cache} if cache is not None else {}
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   output_hidden_states=all_layers, **extra)
    return tuple(out.hidden_states) if all_layers else (out.last_hidden_state,)


class PrefixMemo(dict):
    """Prefix passes kept across the batches of one encode call (inference only): token ids -> (cache, states).

    Every batch of a call usually starts with the same instruction: its pass is then run once per call, not once per
    batch. A batch uses the longest kept prefix its own shared tokens start with (the rest of its shared tokens run
    with each row's own: exact under causal attention), else runs its own prefix and keeps it. The same tokens give
    the same states, so the vectors are those of a pass per batch exactly."""

    def lookup(self, ids: tuple[int, ...], all_layers: bool):
        best = max((k for k in self if k[1] == all_layers and ids[:len(k[0])] == k[0]), key=lambda k: len(k[0]),
                   default=None)
        return (len(best[0]), *self[best]) if best else None


def shared_states(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                  all_layers: bool, shared: int, memo: PrefixMemo | None = None) -> tuple[torch.Tensor, ...]:
    """backbone_states of the batch, its first `shared` tokens (the same in every row) run once (or taken from
    `memo`, no gradients: see PrefixMemo)."""
    batch = input_ids.shape[0]
    kept = memo.lookup(tuple(input_ids[0, :shared].tolist()), all_layers) if memo is not None else None
    if kept is not None:
        shared, cache, head = kept
        tail = backbone_states(backbone, input_ids[:, shared:], attention_mask, position_ids[:, shared:], all_layers,
                               cache.for_batch(batch))
        return tuple(torch.cat([h.expand(batch, -1, -1), t], 1) for h, t in zip(head, tail))
    cache = _cache_class()(_decoder_config(backbone))
    with _checkpointing_keeps_cache(backbone):
        head = backbone_states(backbone, input_ids[:1, :shared], attention_mask[:1, :shared],
                               position_ids[:1, :shared], all_layers, cache)
        if memo is not None:
            memo[tuple(input_ids[0, :shared].tolist()), all_layers] = (cache, head)
        # The mask covers prefix + own tokens (the prefix's part is all ones); positions continue after the prefix.
        tail = backbone_states(backbone, input_ids[:, shared:], attention_mask, position_ids[:, shared:], all_layers,
                               cache.for_batch(batch))
    return tuple(torch.cat([h.expand(batch, -1, -1), t], 1) for h, t in zip(head, tail))
