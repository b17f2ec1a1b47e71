"""Reading YAML config files, with `extends:` so a study's config states only what differs from another one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`: mappings merged key by key, anything else (lists included) replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base.get(k), v) if k in base else v for k, v in over.items()}}
    return over


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping; `extends: other.yaml` (relative to this file) is read first and this file merged on it."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, _seen + (path,)))})")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file holds a mapping of fields, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return merge(read_config(path.parent / parent, _seen + (path,)), raw)
