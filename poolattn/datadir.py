"""Where the data pack comes from: one rule for every command and library call.

The folder named by `--data` (or a config's `data_dir` field) if given, else $POOLATTN_DATA, else ../shared/data
(relative to the working directory). A folder the user named (flag, config field or environment variable) that does
not exist is a usage error naming where the name came from; the default may be absent where nothing needs the pack
(hub tasks, hub datasets, absolute paths).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

ENV = "POOLATTN_DATA"
DEFAULT = "../shared/data"


def data_source(explicit: str | Path | None = None, what: str = "--data") -> tuple[Path, str]:
    """(folder, where its name came from) by the rule above; `what` names the flag or config field of `explicit`.

    Args:
        explicit: the folder the user gave (flag or config field), or None.
        what: how the user gave it, for messages (e.g. "--data", "eval.data_dir").
    """
    if explicit not in (None, ""):
        return Path(explicit).expanduser(), what
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser(), f"${ENV}"
    return Path(DEFAULT), f"the default data folder (set {what} or ${ENV})"


def default_data_dir() -> Path:
    """$POOLATTN_DATA, else ../shared/data: the folder a library call without a data_dir reads."""
    return data_source(None)[0]


def resolve_data_dir(explicit: str | Path | None = None, what: str = "--data", required: bool = False) -> Path:
    """The data folder to use, checked before any work: one line naming its origin when it is not there.

    Args:
        explicit: the folder the user gave (flag or config field), or None for $POOLATTN_DATA / the default.
        what: how the user gave it, for messages (e.g. "--data", "data_dir").
        required: the caller needs the pack itself (its tasks.json): then the default must exist too.
    """
    folder, origin = data_source(explicit, what)
    user_named = origin == what or origin == f"${ENV}"
    if (user_named or required) and not folder.is_dir():
        what_is = "not a folder" if folder.exists() else "no such folder"
        raise UserError(f"{origin}: {what_is}: {folder}", 2)
    if required and not (folder / "tasks.json").is_file():
        raise UserError(f"{origin}: {folder} is not a data pack (no tasks.json)", 2)
    return folder
