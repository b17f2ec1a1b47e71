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


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory):
    """arch -> folder of a tiny random decoder; built once per test session."""
    from poolattn.testing import ARCHS, tiny_backbone

    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny_backbone(root / arch, arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_llama(tiny_backbones) -> str:
    return tiny_backbones["llama"]
