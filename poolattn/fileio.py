"""Writing outputs so that a kill or a full disk never leaves a half-written file under a good name, with the modes
the umask gives (0644 / 0755 under umask 022: exports are meant to be shared and served); checking an output location
before any work is spent on what will be written there; and checking the weight files of a model folder before they
are loaded, so a truncated one is named."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError, write_failed


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it: setting and
    restoring it races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_modes(path: str | Path) -> None:
    """Give `path` (and, for a folder, everything below it) the modes a plain open()/mkdir() would under the umask:
    tempfile's private 0600 / 0700, and safetensors' 0600 files, would make the outputs unreadable to others."""
    path, mask = Path(path), umask()
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it is flushed, fsynced and renamed to `path` (the old file,
    if any, stays until that instant); on failure it is removed and the error names `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's file is 0600 whatever the umask
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
        share_modes(tmp)  # mkdtemp's folder is 0700, safetensors writes 0600 files
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



def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (by any name: ./, symlinks, hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return a.resolve() == b.resolve()


def check_not_input(output: str | Path, inputs: dict[str, str | Path | None], what: str = "--output",
                    replaced_whole: bool = False) -> None:
    """Refuse, before anything is read or written, an output that is one of the command's inputs.

    Args:
        output: the file or folder the command will write.
        inputs: {how the user named it (e.g. "--input"): path or None} for every file or folder the command reads.
        what: how the user named `output`, for the message.
        replaced_whole: the command replaces the output folder as a whole (e.g. export): an input inside it would
            be lost too, and is refused as well.
    """
    out = Path(output).expanduser()
    for name, path in inputs.items():
        if path is None:
            continue
        src = Path(path).expanduser()
        if _same(out, src):
            raise UserError(f"{what} {output} is the {name} {path}: writing it would destroy the input; "
                            f"give another {what}", 2)
        if replaced_whole and out.resolve() in src.resolve().parents:
            raise UserError(f"{what} {output} holds the {name} {path} and is replaced whole: writing it would "
                            f"destroy the input; give another {what}", 2)


@contextmanager
def removed_if_failed(folder: str | Path) -> Iterator[Path]:
    """An output folder a command may create: when the command fails, the folders this call created are removed
    again if nothing was written into them. A folder that existed before, or holds any file, is left as it is.

    Args:
        folder: the command's output folder (it and any missing parents may be created inside the block).
    """
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    try:
        yield folder
    except BaseException:
        if existing != folder:
            _remove_empty(folder)
            for parent in [p for p in folder.parents if existing in p.parents]:  # created on the way, innermost first
                _remove_empty(parent, recurse=False)
        raise


def _remove_empty(folder: Path, recurse: bool = True) -> None:
    """Remove the empty folders at (and with `recurse` under) `folder`, bottom up; never a file, nor a folder that
    holds one."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in folder.iterdir() if recurse else ():
        if sub.is_dir() and not sub.is_symlink():
            _remove_empty(sub)
    try:
        folder.rmdir()  # only if empty
    except OSError:
        pass

def check_weights(path: str | Path) -> None:
    """Raise a one-line error naming the first .safetensors file at `path` (that file, or every one below that
    folder) whose header cannot be read or does not cover the file: truncated or corrupt. Reads headers only."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path] if path.suffix == ".safetensors" else []
    for f in files:
        try:
            with safe_open(str(f), "pt"):
                pass
        except SafetensorError as err:
            raise UserError(f"{f} is corrupt or truncated ({err}); copy or save it again") from err


def read_json(path: str | Path) -> Any:
    """A JSON file poolattn wrote (a model's config): one line naming it when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{path} is corrupt (not valid JSON: {err}); copy or save it again") from err
