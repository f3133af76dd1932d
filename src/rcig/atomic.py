"""Atomic file writes: a crash or an error leaves the old file or the new one, never half.

``atomic_write(path, write)`` calls ``write(fh)`` on a temporary file in the target's
directory, flushes and fsyncs it, renames it over ``path`` (``os.replace`` is atomic on one
filesystem) and fsyncs the directory so the rename itself is durable. On any error the
temporary file is removed and the error propagates; ``path`` is untouched.
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


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(fh)`` (a binary file) atomically; creates the parent
    directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


__all__ = ["atomic_write", "fsync_dir"]
