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


def test_device_cpu_is_honoured_when_a_gpu_is_present(gpus, tiny_llama, tmp_path):
    """With a (mocked) GPU, `auto` goes for CUDA (and fails here, there being none): --device cpu must keep the
    encode and layers commands and eval's model loader on the CPU."""
    from typer.testing import CliRunner

    from poolattn import EmbeddingModel
    from poolattn.cli import app
    from poolattn.evaluation import load_model

    texts = tmp_path / "texts.txt"
    texts.write_text("the cat sat\na dog runs in the park\n")
    gpus(1)
    encode = ["encode", "--model", tiny_llama, "--dtype", "float32", "--input", str(texts),
              "--output", str(tmp_path / "e.npy")]
    assert CliRunner().invoke(app, encode).exit_code != 0  # auto picked the (absent) GPU: the mock bites
    res = CliRunner().invoke(app, encode + ["--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = load_model(tiny_llama, device="cpu", pooling="mean", dtype="float32")
    assert isinstance(m, EmbeddingModel) and m.device.type == "cpu"
    folder = m.save_pretrained(tmp_path / "saved")
    assert load_model(str(folder), device="cpu").device.type == "cpu"


def test_unknown_device_is_a_usage_error(tiny_llama, tmp_path):
    from typer.testing import CliRunner

    from poolattn.cli import app

    res = CliRunner().invoke(app, ["layers", "--model", tiny_llama, "--device", "cuda:7", "--output", str(tmp_path)])
    assert res.exit_code != 0 and "device 'cuda:7'" in res.output and "Traceback" not in res.output


def test_trainer_refuses_an_absent_device_and_honours_cpu(gpus, tiny_llama, tmp_path):
    from helpers import tiny_config, trainer_and_batch

    with pytest.raises(ValueError, match="CUDA is not available"):
        trainer_and_batch(tiny_config(tiny_llama, tmp_path, device="cuda:0", output_dir=str(tmp_path / "a")))
    gpus(1)  # a (mocked) GPU present: device cpu still trains on the CPU
    t, _ = trainer_and_batch(tiny_config(tiny_llama, tmp_path, device="cpu", output_dir=str(tmp_path / "b")))
    assert t.acc.device.type == "cpu" and t.unwrapped.device.type == "cpu"


def test_experiment_device_reaches_training_and_may_change_on_resume(tiny_llama, tmp_path):
    from poolattn import ModelConfig
    from poolattn.experiment import ExperimentConfig, train_config_for, write_config_once

    cfg = ExperimentConfig(output_dir=str(tmp_path), base=ModelConfig(backbone=tiny_llama), device="cpu")
    assert train_config_for(cfg, cfg.designs[0], tmp_path / "run").device == "cpu"
    assert train_config_for(cfg.model_copy(update={"train": {"device": "auto"}}), cfg.designs[0],
                            tmp_path / "run").device == "auto"  # train.device, when set, wins
    write_config_once(tmp_path, cfg)
    write_config_once(tmp_path, cfg.model_copy(update={"device": "auto"}))  # resumed elsewhere: allowed
    with pytest.raises(ValueError, match="different experiment config"):
        write_config_once(tmp_path, cfg.model_copy(update={"seed": 7}))
