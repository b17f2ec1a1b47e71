"""CUDA paths: placement, dtype, attention implementations and GradCache's dropout replay on the GPU.
Skipped without CUDA; benchmarks/gpu_check.sh runs this module on a GPU machine."""
import importlib.util

import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel, ModelConfig
from poolattn.testing import ARCHS
from poolattn.training import contrastive_backward

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TEXTS = ["the cat", "a much longer sentence about a dog running in the park", "hi", "how do i reset my password"]


def _model(backbone, device, **kw):
    kw.setdefault("dtype", "float32")
    return EmbeddingModel(ModelConfig(backbone=backbone, **kw), device=device)


def test_auto_places_on_the_gpu_in_bf16_where_supported(tiny_llama):
    m = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="multilayer",
                                   pooling_kwargs={"num_latents": 4, "num_heads": 4}))
    assert m.device.type == "cuda" and {p.device.type for p in m.parameters()} == {"cuda"}
    major = torch.cuda.get_device_capability(m.device)[0]
    assert next(m.backbone.parameters()).dtype == (torch.bfloat16 if major >= 8 else torch.float32)
    emb = m.encode(TEXTS)
    assert emb.shape == (4, 64) and np.isfinite(emb).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_gpu_equals_cpu_and_implementations_agree(tiny_backbones, arch, attention):
    ref = _model(tiny_backbones[arch], "cpu", attention=attention, pooling="mean", attn_implementation="eager")
    ref = ref.encode(TEXTS)
    for impl in ("sdpa", "eager"):
        emb = _model(tiny_backbones[arch], "cuda", attention=attention, pooling="mean", attn_implementation=impl)
        assert np.abs(emb.encode(TEXTS) - ref).max() < 1e-4, (arch, attention, impl)
    # padding does not leak into the embeddings on the GPU either
    m = _model(tiny_backbones[arch], "cuda", attention=attention, pooling="eos")
    alone = np.stack([m.encode([t])[0] for t in TEXTS])
    assert np.abs(m.encode(TEXTS, batch_size=4) - alone).max() < 1e-4


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="flash-attn is not installed")
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_flash_attention_2_equals_eager(tiny_backbones, attention):
    for arch in ARCHS:
        out = {impl: _model(tiny_backbones[arch], "cuda", attention=attention, pooling="mean", dtype="bfloat16",
                            attn_implementation=impl).encode(TEXTS) for impl in ("flash_attention_2", "eager")}
        cos = (out["flash_attention_2"] * out["eager"]).sum(1)
        assert cos.min() > 0.999, (arch, attention, cos)


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Dropout(0.3), torch.nn.Tanh(),
                                       torch.nn.Linear(32, 16))

    def forward(self, x):
        return self.net(x.to("cuda"))  # inputs arrive on the CPU, as our tokenized chunks do


def test_grad_cache_replays_cuda_dropout_for_cpu_inputs():
    from poolattn.training.losses import info_nce

    torch.manual_seed(0)
    model = _Encoder().cuda()
    chunks = [list(torch.randn(12, 8).split(5)) for _ in range(3)]

    def run(grad_cache, devices):
        model.zero_grad()
        torch.manual_seed(1)
        torch.cuda.manual_seed(1)
        contrastive_backward(model, chunks, lambda reps: info_nce(*reps[:2], reps[2]), grad_cache=grad_cache,
                             devices=devices)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = run(False, None)
    cached = run(True, [torch.device("cuda")])
    assert max((plain[k] - cached[k]).abs().max().item() for k in plain) < 1e-5
    inferred = run(True, None)  # devices of the CPU inputs: no CUDA state replayed (the old behaviour)
    assert max((plain[k] - inferred[k]).abs().max().item() for k in plain) > 1e-4


def test_trainer_grad_cache_equals_plain_step_with_lora_dropout_on_cuda(tiny_llama, tmp_path):
    from helpers import assert_same, grads, tiny_config, trainer_and_batch

    t, batch = trainer_and_batch(tiny_config(tiny_llama, tmp_path, chunk_size=3, device="cuda"))  # LoRA dropout 0.1
    assert t.acc.device.type == "cuda" and t.unwrapped.device.type == "cuda"

    def step(grad_cache, seed):
        t.optimizer.zero_grad()
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)
        loss, *_ = t.backward_step(batch, grad_cache=grad_cache)
        return loss, grads(t.unwrapped)

    loss_plain, g_plain = step(False, 0)
    loss_cached, g_cached = step(True, 0)
    assert torch.allclose(loss_plain, loss_cached, atol=1e-5)
    assert_same(g_plain, g_cached, atol=1e-5)
    g_other = step(True, 1)[1]  # dropout is active on the GPU
    assert max((g_other[k] - g_cached[k]).abs().max() for k in g_cached if "lora_B" in k) > 1e-4


@pytest.mark.integration
def test_smollm2_on_cuda_matches_cpu():
    texts = ["A man is playing a guitar.", "A man plays the guitar.", "The stock market fell sharply today."]
    for attention in ("causal", "bidirectional"):
        cpu = _model("smollm2-135m", "cpu", attention=attention, pooling="mean", max_length=64).encode(texts)
        for impl in ("sdpa", "eager"):
            gpu = _model("smollm2-135m", "cuda", attention=attention, pooling="mean", max_length=64,
                         attn_implementation=impl).encode(texts)
            assert (gpu * cpu).sum(1).min() > 0.9999, (attention, impl)
        bf16 = _model("smollm2-135m", "cuda", attention=attention, pooling="mean", max_length=64,
                      dtype="bfloat16").encode(texts)
        assert (bf16 * cpu).sum(1).min() > 0.99, attention
