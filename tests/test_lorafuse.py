"""Fused LoRA for encoding (poolattn.lorafuse): the same vectors as peft's unfused path (fp32, every tiny
architecture), every LoRA linear fused, and the switches that turn it off (for_inference, encode's CLI flag)."""
import numpy as np
import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear
from typer.testing import CliRunner

from poolattn import EmbeddingModel, ModelConfig
from poolattn.lorafuse import FusedLoraLinear
from poolattn.testing import ARCHS

TEXTS = ["a man is playing a guitar", "the cat", "what is the capital of france, and why is paris it?", "dogs"]
INSTRUCTION = "Retrieve semantically similar text."


def _saved(backbone: str, folder, pooling: str = "mean") -> str:
    """A saved LoRA design whose adapter changes the vectors (lora_B starts at zero), scale alpha/r = 1.5."""
    m = EmbeddingModel(ModelConfig(backbone=backbone, pooling=pooling, dtype="float32"), device="cpu")
    m.add_lora(r=4, alpha=6, dropout=0.1)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in m.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    m.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_vectors_equal_peft_in_fp32(tiny_backbones, tmp_path, arch):
    folder = _saved(tiny_backbones[arch], tmp_path / "m")
    plain = EmbeddingModel.from_pretrained(folder, device="cpu")
    lora_layers = sum(isinstance(x, LoraLinear) for x in plain.modules())
    reference = plain.encode(TEXTS, INSTRUCTION)
    fused = EmbeddingModel.from_pretrained(folder, inference=True, device="cpu")
    unfused = EmbeddingModel.from_pretrained(folder, inference=True, device="cpu", fuse_lora=False)
    assert lora_layers > 0 and sum(isinstance(x, FusedLoraLinear) for x in fused.modules()) == lora_layers
    assert not any(isinstance(x, LoraLinear) for x in fused.modules())
    assert not any(isinstance(x, FusedLoraLinear) for x in unfused.modules())
    without = EmbeddingModel(ModelConfig(backbone=tiny_backbones[arch], pooling="mean", dtype="float32"),
                             device="cpu").encode(TEXTS, INSTRUCTION)
    assert np.abs(reference - without).max() > 1e-3  # the adapter matters, so fusing it must be right
    for m in (fused, unfused):
        assert np.abs(m.encode(TEXTS, INSTRUCTION) - reference).max() <= 1e-5
    # the pinned fingerprint is the unfused model's: embedding caches keyed by it still match
    assert fused.fingerprint() == unfused.fingerprint() == plain.fingerprint()


def test_fused_bf16_is_as_close_to_fp32(tiny_llama, tmp_path):
    """bf16 rounds once per fused product instead of three times: no further from fp32 than peft's path."""
    folder = _saved(tiny_llama, tmp_path / "m")
    reference = EmbeddingModel.from_pretrained(folder, device="cpu").encode(TEXTS, INSTRUCTION)
    err = {}
    for fuse in (True, False):
        m = EmbeddingModel.from_pretrained(folder, inference=True, device="cpu", dtype="bfloat16", fuse_lora=fuse)
        err[fuse] = np.abs(m.encode(TEXTS, INSTRUCTION) - reference).max()
    assert err[True] <= max(err[False] * 1.5, 1e-2)


def test_cli_no_fuse_lora(tiny_llama, tmp_path, monkeypatch):
    from poolattn import lorafuse
    from poolattn.cli import app

    calls = []
    real = lorafuse.fuse_lora
    monkeypatch.setattr(lorafuse, "fuse_lora", lambda model: calls.append(1) or real(model))
    folder = _saved(tiny_llama, tmp_path / "m")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = {}
    for flag in ("--fuse-lora", "--no-fuse-lora"):
        calls.clear()
        res = CliRunner().invoke(app, ["encode", "--model", folder, "--dtype", "float32", "--device", "cpu",
                                       "--input", str(texts), "--output", str(tmp_path / f"{flag}.npy"), flag])
        assert res.exit_code == 0, res.output
        out[flag] = (np.load(tmp_path / f"{flag}.npy"), len(calls))
    assert out["--fuse-lora"][1] == 1 and out["--no-fuse-lora"][1] == 0
    assert np.abs(out["--fuse-lora"][0] - out["--no-fuse-lora"][0]).max() <= 1e-5


def test_a_fused_model_refuses_to_save(tiny_llama, tmp_path):
    m = EmbeddingModel.from_pretrained(_saved(tiny_llama, tmp_path / "m"), inference=True, device="cpu")
    with pytest.raises(ValueError, match="prepared for inference"):
        m.save_pretrained(tmp_path / "again")
