"""Writing outputs so that a kill or a full disk never leaves a half-written file under a good name, and checking an
output location before any work is spent on what will be written there."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import UserError, write_failed


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it is flushed, fsynced and renamed to `path` (the old file,
    if any, stays until that instant); on failure it is removed and the error names `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):
            raise write_failed(path, err) from err
        raise


@contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces `folder` only once the block finished: a reader sees the old
    folder or the new one, never a half-written one; on failure the temporary folder is removed."""
    import shutil

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2))


def writable(folder: str | Path) -> bool:
    """Whether a file can be created in `folder` (tried: os.access says yes to root on read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_file(path: str | Path, what: str = "--output") -> Path:
    """An output file the user named: not a folder, its folder exists and is writable. Raised as a usage error."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name", 2)
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: folder {parent} does not exist", 2)
    if not writable(parent):
        raise UserError(f"{what} {path}: folder {parent} is not writable", 2)
    return path


def check_output_dir(path: str | Path, what: str = "--output") -> Path:
    """An output folder: may not exist yet, but then its nearest existing parent must be a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder", 2)
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir() or not writable(existing):
        raise UserError(f"{what} {path}: {existing} is not writable", 2)
    return path


def check_input_file(path: str | Path, what: str = "--input") -> Path:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} {path}: no such file", 2)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file", 2)
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path}: not readable", 2)
    return path
