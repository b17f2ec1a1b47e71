import subprocess
import sys

import torch
import torch.nn.functional as F

from poolattn.training.losses import gather_with_grad, info_nce


def embeddings(seed, b=6, d=16):
    g = torch.Generator().manual_seed(seed)
    q, p, n = (torch.randn(b, d, generator=g) for _ in range(3))
    mask = torch.tensor([True, False, True, True, False, True][:b])
    return q, p, n * mask[:, None], mask


def reference(q, p, n, mask, scale):
    """Cross-entropy written out: candidates = all positives, then the hard negatives that exist."""
    q, cands = F.normalize(q, dim=-1), F.normalize(torch.cat([p, n[mask]]), dim=-1)
    logits = scale * q @ cands.T
    return torch.stack([torch.logsumexp(logits[i], 0) - logits[i, i] for i in range(len(q))]).mean()


def test_info_nce_matches_written_out_cross_entropy():
    q, p, n, mask = embeddings(0)
    assert torch.allclose(info_nce(q, p, n, mask, scale=20), reference(q, p, n, mask, 20), atol=1e-5)
    assert torch.allclose(info_nce(q, p, scale=7), reference(q, p, n, torch.zeros(6, dtype=bool), 7), atol=1e-5)
    # scale-invariant inputs: cosine, not dot product
    assert torch.allclose(info_nce(3 * q, p, n, mask), info_nce(q, 0.5 * p, n, mask), atol=1e-5)


def test_info_nce_is_low_for_matching_pairs_and_hard_negatives_count():
    q = F.normalize(torch.randn(8, 32), dim=-1)
    assert info_nce(q, q) < 1e-3
    close_negative = q + 0.01 * torch.randn(8, 32)
    assert info_nce(q, q, close_negative) > info_nce(q, q) + 0.5


def test_info_nce_default_value_unchanged():
    """Values recorded before `symmetric` was added: the default (forward-only) loss is the same number."""
    q, p, n, mask = embeddings(0)
    assert abs(float(info_nce(q, p, n, mask)) - 10.494624137878418) < 1e-5
    assert abs(float(info_nce(q, p, scale=7)) - 3.7722232341766357) < 1e-5
    assert torch.equal(info_nce(q, p, n, mask, symmetric=torch.zeros(6, dtype=torch.bool)), info_nce(q, p, n, mask))


def backward_reference(q, p, sym, scale):
    """Each symmetric row's positive against every query, cross-entropy written out, averaged over those rows."""
    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    logits = scale * p @ q.T
    return torch.stack([torch.logsumexp(logits[i], 0) - logits[i, i] for i in range(len(p)) if sym[i]]).mean()


def test_both_directions_is_the_mean_of_forward_and_backward_infonce():
    q, p, n, mask = embeddings(2)
    sym = torch.tensor([True, False, True, False, False, True])
    leaves = [t.clone().requires_grad_() for t in (q, p, n)]
    got = info_nce(*leaves, mask, scale=20, symmetric=sym)
    want = 0.5 * reference(q, p, n, mask, 20) + 0.5 * backward_reference(q, p, sym, 20)
    assert torch.allclose(got, want, atol=1e-5)
    assert abs(float(got.detach()) - float(info_nce(q, p, n, mask))) > 1e-2  # the backward term changes the loss
    got.backward()
    ref_leaves = [t.clone().requires_grad_() for t in (q, p, n)]
    (0.5 * reference(*ref_leaves, mask, 20) + 0.5 * backward_reference(*ref_leaves[:2], sym, 20)).backward()
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    # Hard negatives take no part in the backward term: with every row symmetric, a negative's gradient is the
    # forward term's alone, halved.
    all_sym = torch.ones(6, dtype=torch.bool)
    neg = n.clone().requires_grad_()
    info_nce(q, p, neg, mask, symmetric=all_sym).backward()
    fwd_neg = n.clone().requires_grad_()
    info_nce(q, p, fwd_neg, mask).backward()
    assert torch.allclose(neg.grad, 0.5 * fwd_neg.grad, atol=1e-7) and neg.grad.abs().sum() > 0


def test_both_directions_matches_sentence_transformers_symmetric_loss():
    """Every row symmetric with a hard negative: sentence-transformers' MultipleNegativesSymmetricRankingLoss on the
    (anchor, positive, negative) embeddings gives the same value."""
    import warnings

    from sentence_transformers.losses import MultipleNegativesSymmetricRankingLoss

    q, p, n, _ = embeddings(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of MultipleNegativesRankingLoss(directions=...)
        st = MultipleNegativesSymmetricRankingLoss(None, scale=20.0)
    want = st.compute_loss_from_embeddings([q, p, n], None)
    got = info_nce(q, p, n, scale=20.0, symmetric=torch.ones(6, dtype=torch.bool))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(info_nce(q, p, n, scale=20.0), want, atol=1e-3)


def test_gather_is_identity_without_process_group():
    t = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(t) is t


# Symmetric rows: none; 2 on rank 0 and 1 on rank 1 (the backward mean is over the global count); none on rank 0.
SYMMETRIC = [None, [True, True, False, False, False, True], [False, False, False, True, False, False]]
WORKER = f"SYMMETRIC = {SYMMETRIC!r}\n" + """
import sys, torch, torch.distributed as dist
from poolattn.training.losses import info_nce
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
q, p, n, mask = torch.load(sys.argv[1])
b = q.shape[0] // world
sl = slice(rank * b, (rank + 1) * b)
results = []
for sym in SYMMETRIC:  # None: forward only; else both directions for the rows marked
    leaves = [t[sl].clone().requires_grad_() for t in (q, p, n)]
    loss = info_nce(*leaves, mask[sl], symmetric=None if sym is None else torch.tensor(sym)[sl])
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    grads = [x.grad.new_zeros((world * b, x.grad.shape[1])) for x in leaves]
    for full, leaf in zip(grads, leaves):
        full[sl] = leaf.grad
        dist.all_reduce(full)
    results.append({"loss": torch.stack(losses).mean(), "grads": grads})
if rank == 0:
    torch.save(results, sys.argv[2])
dist.barrier()
from poolattn.distributed import exit_process
exit_process(0)  # destroy_process_group alone still let gloo abort at exit, 3 launches in 40 (poolattn.distributed)
"""


def test_two_processes_score_against_the_global_batch(tmp_path):
    """Each process holds half the rows; the mean loss and the gradient of every embedding equal one process with
    the whole batch (gradients of a process's rows include the other process's loss terms, through the gather).
    DDP averages gradients, so each process's loss is the global mean only after the factor 1/world: the
    gathered gradients here are summed over processes and compared with world x the single-process gradient."""
    # A fresh torchrun (as users launch it), not mp.spawn: spawned ranks aborted in gloo's teardown when the
    # whole suite had run in the parent first.
    q, p, n, mask = embeddings(1, b=6)
    torch.save((q, p, n, mask), tmp_path / "inputs.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    out = tmp_path / "dist.pt"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "worker.py"), str(tmp_path / "inputs.pt"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = torch.load(out)
    assert len(results) == len(SYMMETRIC)
    for got, sym in zip(results, SYMMETRIC):
        leaves = [t.clone().requires_grad_() for t in (q, p, n)]
        loss = info_nce(*leaves, mask, symmetric=None if sym is None else torch.tensor(sym))
        loss.backward()
        assert torch.allclose(got["loss"], loss, atol=1e-6), sym
        for g, leaf in zip(got["grads"], leaves):
            assert torch.allclose(g, 2 * leaf.grad, atol=1e-6), sym
        assert got["grads"][0].abs().sum() > 0
    assert not torch.allclose(results[0]["loss"], results[1]["loss"], atol=1e-3)
