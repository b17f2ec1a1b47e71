"""GradCache (Gao et al. 2021): contrastive loss over a batch larger than memory allows, in chunks, with the
dropout masks of each chunk's two forwards replayed from a saved RNG state."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


class RandContext:
    """Snapshot the CPU RNG and that of every accelerator the forward runs on; entering replays them (and restores
    the outer state on exit), so a chunk's second forward draws the same dropout masks (LoRA dropout) as its first.

    The devices are named, not inferred from the inputs as GradCache's and sentence-transformers' RandContext
    (`get_device_states(*tensors)`) do: our chunks are CPU token ids moved to the GPU inside the forward, so an
    inferred context held no CUDA state and CUDA dropout differed between the two forwards."""

    def __init__(self, *devices: torch.device | str):
        self.cpu_state = torch.get_rng_state()
        self.cuda = sorted({_cuda_index(d) for d in devices if torch.device(d).type == "cuda"})
        self.cuda_states = [torch.cuda.get_rng_state(i) for i in self.cuda]
        self.mps_state = torch.mps.get_rng_state() if any(torch.device(d).type == "mps" for d in devices) else None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=self.cuda)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for index, state in zip(self.cuda, self.cuda_states):
            torch.cuda.set_rng_state(state, index)
        if self.mps_state is not None:
            self._mps_outer = torch.mps.get_rng_state()
            torch.mps.set_rng_state(self.mps_state)

    def __exit__(self, *exc):
        if self.mps_state is not None:
            torch.mps.set_rng_state(self._mps_outer)
        self._fork.__exit__(*exc)


def _cuda_index(device: torch.device | str) -> int:
    device = torch.device(device)
    return torch.cuda.current_device() if device.index is None else device.index


def _devices_of(x: Any) -> list[torch.device]:
    tensors = [v for v in x.values() if isinstance(v, torch.Tensor)] if isinstance(x, dict) else [x]
    return [t.device for t in tensors if isinstance(t, torch.Tensor)]


def contrastive_backward(embed: Callable[[Any], torch.Tensor], groups: Sequence[Sequence[Any]],
                         loss_fn: Callable[[list[torch.Tensor | None]], torch.Tensor], *, grad_cache: bool,
                         backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                         no_sync: Callable[[], AbstractContextManager] = nullcontext,
                         embed_first: Callable[[Any], torch.Tensor] | None = None,
                         devices: Sequence[torch.device | str] | None = None) -> torch.Tensor:
    """Forward every chunk of every group, loss on the concatenated group embeddings, backward; return the loss.

    groups: per group (queries, positives, ...) a list of chunk inputs for `embed`; an empty group gives None.
    grad_cache=False: one graph over all chunks. grad_cache=True (Gao et al. 2021): (1) every chunk forward
    without keeping its graph, RNG state saved; (2) loss on detached embeddings -> d loss / d embedding;
    (3) each chunk forward again under its saved RNG state and backward of <embedding, cached gradient>.
    Memory then depends on the chunk size only. `no_sync` (DDP) wraps all but the last chunk of step (3), so
    gradients are all-reduced once. `embed_first` (default `embed`) runs step (1): the unwrapped model under DDP.
    `devices`: where the forward runs (the model's devices); their RNG is replayed in step (3) along with the CPU's.
    None: the devices of each chunk's input tensors (right only when the inputs already live where the model does).
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
            rc = RandContext(*(devices if devices is not None else _devices_of(c)))
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
