"""FastDropout (poolattn.training.fastdropout): dropout in distribution (keep rate, scale, unbiased), seeded and
replayable, put on every LoRA layer by the trainer on a CPU unless `fast_dropout: false`."""
import pytest
import torch
from torch import nn

from poolattn.training import TrainConfig, Trainer
from poolattn.training.fastdropout import FastDropout, use_fast_dropout


def test_keep_rate_scale_and_mean():
    d = FastDropout(0.1).train()
    x = torch.ones(1000, 1000)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.9) < 2e-3  # 1e6 draws: SD of the rate 3e-4
    assert torch.allclose(y[kept], torch.full_like(y[kept], d.scale)) and abs(d.scale - 1 / 0.9) < 1e-4
    assert abs(y.mean().item() - 1.0) < 3e-3  # unbiased, as torch's dropout
    # every position is dropped about equally often (no 16-bit lane stuck, e.g. the sign lane of int64)
    lanes = kept.view(-1)[: 999_999].view(-1, 3).float().mean(0)
    assert (lanes - 0.9).abs().max() < 4e-3


def test_eval_mode_and_p0_are_identity_and_seed_replays():
    x = torch.randn(7, 11)
    assert FastDropout(0.3).eval()(x) is x and FastDropout(0.0).train()(x) is x
    d = FastDropout(0.3).train()
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    assert torch.equal(a, d(x))  # GradCache's replay restores the generator and gets the same masks
    assert not torch.equal(a, d(x))
    with pytest.raises(ValueError, match="not in"):
        FastDropout(1.0)


def test_gradient_flows_through_kept_elements():
    x = torch.randn(64, 32, requires_grad=True)
    d = FastDropout(0.5).train()
    torch.manual_seed(0)
    y = d(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0) and torch.allclose(x.grad[y != 0], torch.tensor(d.scale))


@pytest.mark.parametrize("fast", [True, False])
def test_trainer_puts_it_on_every_lora_layer(tiny_llama, tmp_path, fast):
    cfg = TrainConfig(model={"backbone": tiny_llama, "pooling": "eos", "dtype": "float32"}, device="cpu",
                      data=[{"path": "pairs.jsonl"}], data_dir=str(tmp_path), output_dir=str(tmp_path / "run"),
                      max_steps=1, batch_size=2, lora={"r": 4, "alpha": 8, "dropout": 0.1}, fast_dropout=fast,
                      progress=False)
    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "positive": "b"}\n{"query": "c", "positive": "d"}\n')
    t = Trainer(cfg)
    t.setup()
    dropouts = [m for mod in t.unwrapped.modules() if isinstance(getattr(mod, "lora_dropout", None), nn.ModuleDict)
                for m in mod.lora_dropout.values()]
    assert dropouts and all(isinstance(m, FastDropout) == fast for m in dropouts)
    assert use_fast_dropout(t.unwrapped) == (0 if fast else len(dropouts))
