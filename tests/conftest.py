"""Fixtures every test module may ask for: the data pack, tiny random backbones, a saved tiny design to serve.
Plain helper functions live in helpers.py."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA_DIR = Path(os.environ.get("POOLATTN_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "tasks.json").exists():
        pytest.skip(f"data pack not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, loaded CPU two OpenMP threads can make a
    millisecond step take seconds (modules opt in: pytestmark = pytest.mark.usefixtures("one_thread"))."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """arch -> folder of a tiny random decoder; built once per test session."""
    from poolattn.testing import ARCHS, tiny_backbone

    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny_backbone(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_llama(tiny_backbones) -> str:
    return tiny_backbones["llama"]


@pytest.fixture(scope="module")
def served_folder(tiny_llama, tmp_path_factory) -> str:
    """A saved design with a trainable pooler, so a fresh random pooler could not pass for it."""
    import torch

    from poolattn import EmbeddingModel, ModelConfig

    torch.manual_seed(0)
    model = EmbeddingModel(ModelConfig(backbone=tiny_llama, pooling="latent", dtype="float32", max_length=64,
                                       pooling_kwargs={"num_latents": 4, "num_heads": 4}))
    return str(model.save_pretrained(tmp_path_factory.mktemp("serve") / "tiny-latent"))


@pytest.fixture(scope="module")
def served_model(served_folder):
    """served_folder loaded for inference, as `poolattn serve` loads it."""
    from poolattn import EmbeddingModel

    return EmbeddingModel.from_pretrained(served_folder, inference=True)
