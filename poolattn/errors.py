"""The command line's one error boundary: an exception that reaches it becomes one or two lines on stderr that name
the problem and the file, and an exit status (2: bad usage or config, 1: the run failed); the traceback only with
`poolattn --debug ...` or POOLATTN_DEBUG=1.

Library code raises ordinary exceptions (ValueError, FileNotFoundError, OSError with a filename, ...) or
`UserError` when it knows the user's mistake; nothing below the CLI prints or exits.
"""
from __future__ import annotations

import errno
import os
import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

DEBUG_HINT = "(rerun with --debug or POOLATTN_DEBUG=1 for the traceback)"
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# What torch's C++ writer says when a write fails (a full disk among other reasons): no errno, no path.
TORCH_WRITE_FAILED = ("iostream error", "unexpected pos", "file write failed", "PytorchStreamWriter failed")


class UserError(Exception):
    """A mistake of the user's (bad argument, file or config): shown as its message alone. exit_code 2 for usage."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def disk_full(path: str | Path, err: BaseException | None = None) -> OSError:
    """The error to raise when writing `path` failed for want of space."""
    free = ""
    try:
        import shutil

        existing = next(p for p in [Path(path), *Path(path).parents] if p.exists())
        free = f", {shutil.disk_usage(existing).free / 2**20:.0f} MiB free"
    except (OSError, StopIteration):
        pass
    return OSError(errno.ENOSPC, f"no space left on the device{free} ({err})" if err else "no space left on the "
                   f"device{free}", str(path))


def write_failed(path: str | Path, err: BaseException) -> BaseException:
    """Translate a failed write of `path` (an OSError, or torch's errno-less RuntimeError) into an error that names
    the path, and says "no space left" when the disk is (nearly) full."""
    import shutil

    if isinstance(err, OSError) and err.errno in DISK_FULL:
        return disk_full(path, err.strerror or err)
    if isinstance(err, OSError) and err.filename:
        return err
    try:
        existing = next(p for p in [Path(path), *Path(path).parents] if p.exists())
        nearly_full = shutil.disk_usage(existing).free < 16 * 2**20
    except (OSError, StopIteration):
        nearly_full = False
    if nearly_full:
        return disk_full(path, err)
    if isinstance(err, OSError):
        return OSError(err.errno, err.strerror or str(err), str(path))
    if isinstance(err, RuntimeError) and any(s in str(err) for s in TORCH_WRITE_FAILED):
        return OSError(errno.EIO, f"write failed ({err})", str(path))
    return err


def _file_in_traceback(exc: BaseException) -> str | None:
    """The file a reader was reading when `exc` was raised: the innermost frame's `path`/`filename` local that names
    an existing file. Decoders (gzip, utf-8) raise errors that name no file; this recovers it for the message."""
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        for name in ("path", "filename", "file", "fname", "source"):
            value = frame.f_locals.get(name)
            if isinstance(value, (str, Path)) and str(value) and Path(value).is_file():
                return str(value)
    return None


def describe(exc: BaseException) -> tuple[str, int]:
    """(message, exit status) for an exception that reached the CLI."""
    import gzip
    import zlib

    import yaml
    from pydantic import ValidationError

    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        parts = [f"{'.'.join(str(p) for p in e['loc']) or exc.title}: {e['msg']}" for e in errs[:3]]
        more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
        return f"invalid {exc.title} config: {'; '.join(parts)}{more}", 2
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        name = mark.name if mark is not None and not mark.name.startswith("<") else _file_in_traceback(exc)
        where = f"{name or 'YAML'}:{mark.line + 1}: " if mark is not None else f"{name}: " if name else ""
        return f"{where}not valid YAML ({getattr(exc, 'problem', None) or exc})", 2
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return f"disk full: {exc.strerror or 'no space left on the device'} writing {exc.filename or '?'}", 1
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"read-only file system: cannot write {exc.filename}", 1
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", 1
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return (f"{exc.strerror.lower()}: {exc.filename}" if exc.filename else str(exc)), 1
    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error)):
        where = _file_in_traceback(exc) or "a compressed input file"
        return f"{where}: truncated or corrupt compressed file ({exc or type(exc).__name__})", 1
    if isinstance(exc, UnicodeDecodeError):
        where = _file_in_traceback(exc) or "an input file"
        return (f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                f"save it as UTF-8"), 1
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}", 1
    if isinstance(exc, (ValueError, RuntimeError, OSError, KeyError, LookupError)) and str(exc):
        # Our own checks raise these with the file and field in the message.
        return str(exc).strip().splitlines()[0], 1
    return f"internal error: {type(exc).__name__}: {exc}", 1


def debug_requested(ctx: Any = None) -> bool:
    return os.environ.get("POOLATTN_DEBUG", "") not in ("", "0") or bool(ctx is not None
                                                                       and ctx.meta.get("poolattn_debug"))


class ErrorBoundary(TyperGroup):
    """The CLI's command group: every command runs inside `invoke`, so one handler sees every error (also under
    typer's CliRunner, which bypasses Typer.__call__), bad option values included (exit 2)."""

    def invoke(self, ctx: Any) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click

        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, NoArgsIsHelpError):
            raise
        except ClickException as exc:  # a bad option value: one line, not typer's boxed usage screen
            if debug_requested(ctx):
                raise
            typer.secho(f"error: {exc.format_message()}", err=True, fg="red")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # the boundary: everything becomes a message and a status
            if debug_requested(ctx):
                raise
            message, code = describe(exc)
            typer.secho(f"error: {message}", err=True, fg="red")
            if message.startswith("internal error"):
                typer.echo(DEBUG_HINT, err=True)
            raise typer.Exit(code) from None
