"""Reading YAML config files, with `extends:` so a study's config states only what differs from another one."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


def merge(base: Any, over: Any) -> Any:
    """`over` on top of `base`: mappings merged key by key, anything else (lists included) replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge(base.get(k), v) if k in base else v for k, v in over.items()}}
    return over


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping; `extends: other.yaml` (relative to this file) is read first and this file merged on it.
    An empty file (nothing but comments and blank lines) or one that holds no mapping is a usage error: the
    built-in defaults would otherwise start a run nobody asked for."""
    what = "CONFIG" if not _seen else f"extends in {_seen[-1]}"
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, _seen + (path,)))})")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if raw is None:
        raise UserError(f"{what}: {path} is empty (no config fields); see configs/ for examples", 2)
    if not isinstance(raw, dict):
        raise UserError(f"{what}: {path} holds a {type(raw).__name__}, not a mapping of config fields", 2)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    return merge(read_config(path.parent / parent, _seen + (path,)), raw)
