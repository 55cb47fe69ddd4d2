"""Atomic file writes: a crash leaves the old file or the new one, never a torn one.

A write that fails (no space left, over the file size limit, a read-only or missing
folder) removes its temp file and raises :class:`~robench.api.errors.WriteError`: one line
naming the file and the operating system's reason, exit code 2, no traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from robench.api.errors import WriteError, one_line

_UMASK = os.umask(0)
os.umask(_UMASK)

#: what the user can do about the errors that mean "the disk or the quota is full"
_FULL = "free some space or choose another folder"
_HINTS = {
    code: hint
    for code, hint in (
        (errno.ENOSPC, _FULL),
        (getattr(errno, "EDQUOT", None), _FULL),  # not on every platform
        (errno.EFBIG, "over the file size limit of this process (ulimit -f) or of the file system"),
    )
    if code is not None
}


def _reason(exc: OSError | ValueError) -> str:
    """'No space left on device (ENOSPC; free some space ...)': the OS's words, the errno's
    name and, for a full disk, what to do. A ValueError (a NUL in a path) has no errno."""
    code = getattr(exc, "errno", None)
    if not isinstance(exc, OSError) or code is None:
        return one_line(exc) or type(exc).__name__
    name = errno.errorcode.get(code, f"errno {code}")
    hint = _HINTS.get(code)
    return f"{os.strerror(code)} ({name}{'; ' + hint if hint else ''})"


def atomic_write_bytes(
    path: str | Path, data: bytes | bytearray | memoryview, *, overwrite: bool = True
) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it into place.

    With ``overwrite=False`` an existing file is never replaced (records are immutable)
    and :class:`FileExistsError` is raised. On any failure the temp file is removed, so
    neither a torn ``path`` nor a stray temp file is left; an OSError becomes a
    :class:`WriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except (OSError, ValueError) as exc:
        raise WriteError(f"cannot write to {path.parent}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it, not mkstemp's 0600
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError rather than replacing
            os.unlink(tmp)
    except BaseException as exc:  # Ctrl-C mid-write too: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileExistsError):
            raise WriteError(f"writing {path} failed: {_reason(exc)}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def ensure_writable(folder: str | Path) -> Path:
    """Create ``folder`` and prove a file can be written there, before hours of training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".robench-write-check.")
        os.close(fd)
        os.unlink(tmp)
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        raise WriteError(f"folder {folder} is not writable: {_reason(exc)}") from None
    return folder


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created if missing) while the block runs.

    Runs sharing a results folder each write their own record, then rebuild the board
    under this lock: the last to take it has seen every record written before it, so
    the board never drops a run. Without ``fcntl`` (Windows) it does not lock.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fh = open(path, "a+b")
    except OSError as exc:
        raise WriteError(f"cannot create the lock file {path}: {_reason(exc)}") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def file_safe(text: str) -> str:
    """A name usable as a file name everywhere (``timm/vit`` -> ``timm_vit``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)
