"""InfoNCE with in-batch and hard negatives, scored against the global batch of every process; Matryoshka's sum of
a loss over truncated widths.

Embeddings are all-gathered *with* their gradient (torch.distributed.nn's all_gather, whose backward sums the
gradient every process computed for each slice and returns it to its owner), so N processes with b rows each
give exactly the loss and gradients of one process with N*b rows.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import world


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` of every process along dim 0 (rank order), keeping the autograd graph."""
    rank, size = world()
    if size == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private functional-collectives API; still correct
        warnings.simplefilter("ignore", FutureWarning)
        parts = list(all_gather(t))
    return torch.cat(parts, dim=0)


def info_nce(query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None,
             negative_mask: torch.Tensor | None = None, scale: float = 20.0, gather: bool = True,
             symmetric: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each local query against all positives and hard negatives of the global batch.

    query, positive: [b, D]; negative: [b, D] (row i is query i's hard negative; rows without one are zeros and
    False in negative_mask [b]). Similarity is cosine x scale (scale 20 = temperature 0.05). Every process must
    call this with the same b and the same presence of `negative` and of `symmetric`.

    symmetric: [b] bool, rows whose query and positive are interchangeable (NLI, paraphrase, duplicates): the loss
    is then the mean of this forward InfoNCE and a backward InfoNCE in which each symmetric row's positive is
    scored against every query of the global batch (hard negatives take no part), averaged over the symmetric rows
    of the global batch: 0.5 * forward + 0.5 * backward; with no symmetric row anywhere, the forward loss alone.
    On a batch of symmetric rows this is sentence-transformers' MultipleNegativesSymmetricRankingLoss (in 6.x:
    MultipleNegativesRankingLoss with directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction":
    per row, the mean of the two directions' log-partitions minus the shared positive score; forward candidates are
    positives and hard negatives, backward candidates the anchors; its gather_across_devices=True gathers both).
    """
    q = F.normalize(query.float(), dim=-1)
    cands = p = F.normalize(positive.float(), dim=-1)
    valid = None
    if negative is not None:
        if negative_mask is None:
            negative_mask = torch.ones(negative.shape[0], dtype=torch.bool, device=negative.device)
        cands = torch.cat([cands, F.normalize(negative.float(), dim=-1)])
        valid = torch.cat([torch.ones(positive.shape[0], dtype=torch.bool, device=q.device),
                           negative_mask.to(q.device, torch.bool)])
    rank, size = world() if gather else (0, 1)
    if size > 1:
        b = positive.shape[0]
        parts = gather_with_grad(cands).split(cands.shape[0])  # per rank: [positives; negatives]
        pos = torch.cat([p[:b] for p in parts])
        neg = [p[b:] for p in parts]
        cands = torch.cat([pos, *neg])
        if valid is not None:
            v8 = valid.to(torch.uint8)  # gloo has no bool all_gather
            vparts = [torch.empty_like(v8) for _ in range(size)]
            dist.all_gather(vparts, v8)
            vparts = [v.bool() for v in vparts]
            valid = torch.cat([torch.cat([v[:b] for v in vparts]), *[v[b:] for v in vparts]])
    logits = scale * q @ cands.T
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    labels = torch.arange(q.shape[0], device=q.device) + rank * positive.shape[0]
    forward = F.cross_entropy(logits, labels)
    if symmetric is None:
        return forward
    sym = symmetric.to(q.device, torch.bool)
    count = sym.sum()
    if size > 1:  # every process needs the global number of symmetric rows (a collective: all processes call it)
        count = count.to(torch.int64)
        dist.all_reduce(count)
    count = int(count)
    if count == 0:
        return forward
    # Backward direction: local positives against the queries of every process (gathered with their gradient, as
    # the candidates above). Each process returns its share of the global mean: DDP averages over processes, so
    # the local sum is scaled by size / count; with one process that is the mean over the symmetric rows.
    queries = gather_with_grad(q) if size > 1 else q
    backward = F.cross_entropy(scale * p @ queries.T, labels, reduction="none")
    return 0.5 * forward + 0.5 * torch.where(sym, backward, 0.0).sum() * size / count


def shrink(t: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` components of each row, L2-renormalised (sentence-transformers' matryoshka `shrink`: half
    precision normalised in float32 and cast back)."""
    t = t[..., :dim]
    dtype = t.dtype
    if dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return F.normalize(t, p=2, dim=-1).to(dtype)


def matryoshka_loss(loss_fn: Callable[[list[torch.Tensor | None]], torch.Tensor], dims: Sequence[int],
                    weights: Sequence[float] | None = None) -> Callable[[list[torch.Tensor | None]], torch.Tensor]:
    """Matryoshka representation learning as sentence-transformers' MatryoshkaLoss computes it: `loss_fn` (of the
    query, positive, negative embeddings) applied to the embeddings truncated to each width of `dims` and
    renormalised, the results summed with `weights` (default 1 each). Faithful to MatryoshkaLoss with all widths every
    step (n_dims_per_step=-1); its ForwardDecorator / CachedLossDecorator only avoid encoding the batch once per width,
    which here never happens: `loss_fn` already receives the embeddings (under GradCache the cached ones, so the loss
    on them is computed per width and one backward returns the summed gradient to each chunk). `dims` holds every
    width trained, the full one included (MatryoshkaLoss only warns when it is left out; the trainer adds it)."""
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims):
        raise ValueError(f"{len(weights)} matryoshka weights for {len(dims)} widths {list(dims)}")

    def loss(reps: list[torch.Tensor | None]) -> torch.Tensor:
        return sum(w * loss_fn([None if r is None else shrink(r, d) for r in reps]) for d, w in zip(dims, weights))
    return loss
