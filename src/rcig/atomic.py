"""Atomic file writes: a crash or an error leaves the old file or the new one, never half.

``atomic_write(path, write)`` calls ``write(fh)`` on a temporary file in the target's
directory, flushes and fsyncs it, renames it over ``path`` (``os.replace`` is atomic on one
filesystem) and fsyncs the directory so the rename itself is durable. On any error the
temporary file is removed and the error propagates; ``path`` is untouched (an OSError
becomes an RcigError naming ``path``, not the temporary file). The file gets the mode a plain
``open`` would give it, 0o666 minus the umask (mkstemp's 0o600 would hide it from the group).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable; not possible on every platform, harmless to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(fh)`` (a binary file) atomically; creates the parent
    directory; returns the path."""
    from rcig.errors import RcigError

    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a read-only folder: name the user's file
            raise RcigError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise
    fsync_dir(path.parent)
    return path


__all__ = ["atomic_write", "fsync_dir"]
