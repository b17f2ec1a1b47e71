"""Device resolution (`auto`, `cuda:N`, `cpu`) with mocked accelerators, and `--device cpu` honoured."""
import pytest
import torch

from poolattn import device as dev
from poolattn.backbone import resolve_dtype


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has `n` CUDA devices of compute capability `major`."""
    def install(n: int, major: int = 8, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (major, 0))
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(dev, "_mps_available", lambda: mps)
    return install


def test_auto_is_cpu_without_accelerators(gpus):
    gpus(0)
    assert dev.resolve_device("auto") == torch.device("cpu")
    assert dev.resolve_device(None) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(gpus):
    gpus(0, mps=True)
    assert dev.resolve_device("auto") == torch.device("mps")
    gpus(2, mps=True)
    assert dev.resolve_device("auto") == torch.device("cuda", 0)


def test_auto_under_a_launcher_is_the_local_rank_gpu(gpus, monkeypatch):
    gpus(4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dev.resolve_device("auto") == torch.device("cuda", 3)


def test_explicit_devices(gpus):
    gpus(2)
    assert dev.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert dev.resolve_device("cuda") == torch.device("cuda", 0)
    assert dev.resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match="2 CUDA device"):
        dev.resolve_device("cuda:2")
    with pytest.raises(ValueError, match="not a device"):
        dev.resolve_device("gpu0")


def test_cuda_and_mps_refused_where_absent(gpus):
    gpus(0)
    with pytest.raises(ValueError, match="CUDA is not available"):
        dev.resolve_device("cuda:0")
    with pytest.raises(ValueError, match="MPS is not available"):
        dev.resolve_device("mps")


def test_auto_dtype_is_bf16_on_ampere_and_fp32_before(gpus):
    gpus(1, major=8)
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16
    gpus(1, major=7)  # V100: bf16 is emulated
    assert resolve_dtype("auto", "cuda:0") is torch.float32
    gpus(0, mps=True)
    assert resolve_dtype("auto", "mps") is torch.float32
    assert resolve_dtype("float16", "cpu") is torch.float16


def test_model_is_placed_on_the_device_asked_for(tiny_llama):
    from poolattn import EmbeddingModel, ModelConfig

    m = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="multilayer", dtype="float32",
                                   pooling_kwargs={"num_latents": 4, "num_heads": 4}), device="cpu")
    assert m.device == torch.device("cpu")
    assert {p.device.type for p in m.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="device 'tpu'"):
        EmbeddingModel(ModelConfig(backbone=tiny_llama, dtype="float32"), device="tpu")


def test_flash_attention_refused_with_a_reason_on_cpu(tiny_llama):
    from poolattn import EmbeddingModel, ModelConfig

    with pytest.raises(ValueError, match="flash"):
        EmbeddingModel(ModelConfig(backbone=tiny_llama, attn_implementation="flash_attention_2"), device="cpu")
