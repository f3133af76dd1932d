"""Atomic file writes: a crash or an error leaves the old file or the new one, never half.

``atomic_write(path, write)`` (``atomic_write_text(path, text)`` for a text) calls ``write(fh)`` on a temporary file in the target's
directory, flushes and fsyncs it, renames it over ``path`` (``os.replace`` is atomic on one
filesystem) and fsyncs the directory so the rename itself is durable. On any error the
temporary file is removed and the error propagates; ``path`` is untouched. A write the
filesystem refuses (a full disk, a file-size limit, a quota, a read-only or unwritable
folder) becomes a :class:`WriteError` naming ``path`` and the system's reason, also when
the writer (torch's, PIL's) reports it as an error of its own: the file object handed to
``write`` remembers the OSError it raised. The file gets the mode a plain ``open`` would
give it, 0o666 minus the umask (mkstemp's 0o600 would hide it from the group).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from rcig.errors import RcigError


class WriteError(RcigError):
    """The filesystem refused to write ``path``: ``cannot write PATH: REASON``."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.path, self.errno = path, error.errno


class _Remembering:
    """A binary file whose ``write`` remembers the OSError it raised (a writer may replace it
    by an error of its own that no longer says what the filesystem said)."""

    def __init__(self, fh: BinaryIO):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


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
    path = Path(path)
    tmp, fh = None, None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as raw:
            fh = _Remembering(raw)
            write(fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        refused = exc if isinstance(exc, OSError) else fh.error if fh is not None else None
        if refused is not None:  # a full disk, a read-only folder: name the user's file
            raise WriteError(path, refused) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); returns the path."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


__all__ = ["WriteError", "atomic_write", "atomic_write_text", "fsync_dir"]
