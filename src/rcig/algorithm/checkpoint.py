"""Checkpoints that a crash cannot corrupt and that load without running code.

``save_checkpoint`` writes to a temporary file in the same directory, fsyncs it and renames
it over the old one, so a kill at any moment leaves either the old or the new checkpoint.
``load_checkpoint`` uses ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from rcig.errors import RcigError


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise RcigError(f"no checkpoint at {path}")
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        raise RcigError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
