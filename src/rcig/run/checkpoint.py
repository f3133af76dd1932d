"""Checkpoints that a crash cannot corrupt and that load without running code.

``save_checkpoint`` writes through :func:`rcig.atomic.atomic_write` (a temporary file in the
same directory, fsynced, renamed over the old one), so a kill at any moment leaves either the
old or the new checkpoint, never half of one.
``load_checkpoint`` uses ``torch.load(weights_only=True)``: tensors and plain containers only,
no pickled code. Each checkpoint carries a SHA-256 of its contents (:func:`content_digest`,
under the key ``CHECKSUM``): a file damaged on disk (a flipped byte in a tensor loads fine and
would resume a broken run) is refused in one line; a file without one loads unchecked.
A state is a nested dict of tensors, ints, floats, bools, strings, None, lists/tuples/dicts of
those, and RNG states (``torch.Generator.get_state()`` ByteTensors, ``random.getstate()``,
numpy ``bit_generator.state`` dicts); numpy arrays are stored as tensors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcig.atomic import atomic_write
from rcig.errors import RcigError

_SCALARS = (bool, int, float, str, type(None))
CHECKSUM = "sha256"  # the key that holds a checkpoint's content digest


def content_digest(state: Any) -> str:
    """SHA-256 (hex) of a checkpoint state: every tensor's dtype, shape and bytes, every key and
    scalar, in order (dicts by sorted key), so any change to what would be resumed changes it."""
    digest = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            flat = obj.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(obj, dict):
            digest.update(f"D{len(obj)}".encode())
            for key in sorted(obj, key=repr):
                digest.update(f"K{key!r}".encode())
                feed(obj[key])
        elif isinstance(obj, (list, tuple)):
            digest.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
            for item in obj:
                feed(item)
        else:
            digest.update(f"S{obj!r}".encode())

    feed(state)
    return digest.hexdigest()


def sealed(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its :func:`content_digest` under ``CHECKSUM`` (what ``save_checkpoint`` writes)."""
    state = {k: v for k, v in state.items() if k != CHECKSUM}
    return {**state, CHECKSUM: content_digest(state)}


def storable(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy arrays/scalars turned into tensors/Python scalars; a TypeError naming
    the offending key for anything ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(obj, (torch.Tensor, *_SCALARS)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint key {key!r} in {where} must be a str or int")
        return {k: storable(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [storable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    hint = " (store generator.get_state())" if isinstance(obj, torch.Generator) else ""
    raise TypeError(f"cannot checkpoint {where} of type {type(obj).__name__}{hint}")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (:func:`rcig.atomic.atomic_write`)."""
    from rcig.crashpoints import crash_point

    state = sealed(storable(state))  # fail before touching the disk

    def write(fh) -> None:
        torch.save(state, fh)
        crash_point("checkpoint-write")  # tests: killed with the temporary file written, not renamed

    atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state saved at ``path`` (without its checksum); RcigError if it is missing,
    unreadable or damaged (its contents no longer match the checksum saved with them)."""
    path = Path(path)
    if not path.is_file():
        raise RcigError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable file
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise RcigError(f"cannot read checkpoint {path}: {lines[0]}") from None
    if not isinstance(state, dict):
        raise RcigError(f"cannot read checkpoint {path}: not a checkpoint (a {type(state).__name__})")
    saved = state.pop(CHECKSUM, None)
    if saved is not None and saved != content_digest(state):
        raise RcigError(f"checkpoint {path} is damaged (its contents do not match the checksum saved with "
                        "them); delete it to restart from the beginning")
    return state


__all__ = ["CHECKSUM", "content_digest", "load_checkpoint", "save_checkpoint", "sealed", "storable"]
