"""GradCache (Gao et al. 2021): contrastive loss over a batch larger than memory allows, in chunks, with the
dropout masks of each chunk's two forwards replayed from a saved RNG state."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Sequence

import torch


class RandContext:
    """Snapshot the CPU/CUDA RNG now; entering replays it (and restores the outer state on exit), so a chunk's
    second forward draws the same dropout masks (LoRA dropout) as its first. The same ~10 lines as GradCache's and
    sentence-transformers' RandContext, whose home in sentence-transformers is private and moves between versions."""

    def __init__(self, *tensors: torch.Tensor):
        from torch.utils.checkpoint import get_device_states

        self.cpu_state = torch.get_rng_state()
        self.devices, self.device_states = get_device_states(*tensors)

    def __enter__(self):
        from torch.utils.checkpoint import set_device_states

        self._fork = torch.random.fork_rng(devices=self.devices)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        set_device_states(self.devices, self.device_states)

    def __exit__(self, *exc):
        self._fork.__exit__(*exc)


def _tensors(x: Any) -> list[torch.Tensor]:
    return [v for v in x.values() if isinstance(v, torch.Tensor)] if isinstance(x, dict) else [x]


def contrastive_backward(embed: Callable[[Any], torch.Tensor], groups: Sequence[Sequence[Any]],
                         loss_fn: Callable[[list[torch.Tensor | None]], torch.Tensor], *, grad_cache: bool,
                         backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                         no_sync: Callable[[], ContextManager] = nullcontext,
                         embed_first: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """Forward every chunk of every group, loss on the concatenated group embeddings, backward; return the loss.

    groups: per group (queries, positives, ...) a list of chunk inputs for `embed`; an empty group gives None.
    grad_cache=False: one graph over all chunks. grad_cache=True (Gao et al. 2021): (1) every chunk forward
    without keeping its graph, RNG state saved; (2) loss on detached embeddings -> d loss / d embedding;
    (3) each chunk forward again under its saved RNG state and backward of <embedding, cached gradient>.
    Memory then depends on the chunk size only. `no_sync` (DDP) wraps all but the last chunk of step (3), so
    gradients are all-reduced once. `embed_first` (default `embed`) runs step (1): the unwrapped model under DDP.
    """
    if not grad_cache:
        reps = [torch.cat([embed(c) for c in g]) if len(g) else None for g in groups]
        loss = loss_fn(reps)
        backward(loss)
        return loss.detach()

    embed_first = embed_first or embed
    saved: list[list[tuple[RandContext, int]]] = []  # per chunk: RNG state before its forward, its row offset
    reps: list[torch.Tensor | None] = []
    for g in groups:
        outs, saved_g, offset = [], [], 0
        for c in g:
            rc = RandContext(*_tensors(c))
            # Grad mode stays on (detach drops the graph at once): the forward must be the very same computation
            # as in step (3), and EmbeddingModel switches to an inference copy of its pooler under no_grad.
            outs.append(embed_first(c).detach())
            saved_g.append((rc, offset))
            offset += outs[-1].shape[0]
        saved.append(saved_g)
        reps.append(torch.cat(outs).requires_grad_() if outs else None)
    loss = loss_fn(reps)
    loss.backward()
    grads = [None if r is None else (r.grad if r.grad is not None else torch.zeros_like(r)) for r in reps]
    chunks = [(gi, ci) for gi, g in enumerate(groups) for ci in range(len(g))]
    for gi, ci in chunks:
        rc, offset = saved[gi][ci]
        with rc, (nullcontext() if (gi, ci) == chunks[-1] else no_sync()):
            emb = embed(groups[gi][ci])
            backward((emb * grads[gi][offset:offset + emb.shape[0]]).sum())
    return loss.detach()
