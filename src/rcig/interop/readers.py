"""Readers for distilled sets made by other tools: each returns an :class:`Imported`.

Nothing here can run code from a file: ``.pt`` files are read only with
``torch.load(weights_only=True)`` (plain tensors, dicts, lists, numbers, strings), ``.npz``
with ``allow_pickle=False``, flax checkpoints with rcig's own msgpack decoder.

==========  ============================================================================
format      what is read
==========  ============================================================================
rcig        a Flax checkpoint of the RCIG release: ``ema_average/{x_proto, y_proto, log_temp}``
frepo       a Flax checkpoint of the FRePo release: ``params/{x_proto, y_proto, log_temp}``
mtt         ``images_best.pt`` (N, C, H, W) [+ ``labels_best.pt`` beside it] (MTT, DATM)
dc          one ``.pt`` holding ``{'data': [[images, labels], ...]}`` (DC, DSA, DM, DC-Bench)
kip         ``.npz`` with ``images`` (N, H, W, C) and ``labels``
==========  ============================================================================
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from rcig.errors import RcigError
from rcig.interop import flax


class Imported(NamedTuple):
    images: torch.Tensor  # (N, C, H, W) float32, exactly as stored (the source's model space)
    labels: torch.Tensor  # (N, K) float32 soft labels, or (N,) int64 class indices
    extra: dict[str, Any]  # what else the file said (log_temp, how many sets it held, ...)


def load_pt(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)``; a pickle that needs more is refused in one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RcigError(f"{path} is a pickle that needs more than tensors to load (torch.load with "
                        "weights_only=True refuses it); rcig never unpickles such files: re-save it "
                        "with plain tensors, lists and dicts") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not a torch file"
        raise RcigError(f"{path} is not a readable .pt file ({str(exc).splitlines()[0][:100]})") from None


def as_tensor(value: Any, what: str, path: str | Path) -> torch.Tensor:
    """A tensor or numpy array as a CPU tensor (integers as int64, floats as float64 or as
    stored); one line for anything else, arrays of strings or objects included."""
    if isinstance(value, np.ndarray):
        kinds = {"b": bool, "i": np.int64, "u": np.int64, "f": None}
        if value.dtype.kind not in kinds:
            raise RcigError(f"{path}: {what} holds {value.dtype} values, not numbers")
        value = torch.from_numpy(np.array(value, dtype=kinds[value.dtype.kind] or value.dtype))
    if not isinstance(value, torch.Tensor):
        raise RcigError(f"{path}: {what} is a {type(value).__name__}, not a tensor")
    return value.detach().cpu()


def checked(images: torch.Tensor, labels: torch.Tensor | None, path, extra: dict | None = None) -> Imported:
    """What a set file must hold, checked before any work: images (N, C, H, W) of numbers,
    N >= 1, C 1 or 3, square, all finite; labels (N,) class indices >= 0 or (N, K) finite soft
    labels with K >= 2, or None (none stored: left empty, see :func:`read_mtt`). One line if not."""
    if images.dim() != 4:
        raise RcigError(f"{path}: images have shape {tuple(images.shape)}, expected 4 dimensions")
    n, c, h, w = images.shape
    if n == 0:
        raise RcigError(f"{path}: holds no images (shape {tuple(images.shape)})")
    if c not in (1, 3) or h != w or h == 0:
        raise RcigError(f"{path}: images must be square with 1 or 3 channels, got {c} x {h} x {w} (C x H x W)")
    if images.dtype == torch.bool or images.is_complex():
        raise RcigError(f"{path}: images must be numbers, got {images.dtype}")
    images = images.to(torch.float32)
    if not bool(torch.isfinite(images).all()):
        raise RcigError(f"{path}: images hold NaN or infinite values (or values beyond float32)")
    if labels is None:
        return Imported(images.float().contiguous(), torch.empty(0, dtype=torch.long), extra or {})
    if labels.dim() not in (1, 2) or len(labels) != n:
        raise RcigError(f"{path}: labels {tuple(labels.shape)} do not fit images {tuple(images.shape)} "
                        "(expected N class indices or N x K soft labels)")
    if labels.dtype == torch.bool or labels.is_complex():
        raise RcigError(f"{path}: labels must be numbers, got {labels.dtype}")
    labels = labels.to(torch.float64 if labels.is_floating_point() else torch.int64)
    if not bool(torch.isfinite(labels).all()):
        raise RcigError(f"{path}: labels hold NaN or infinite values")
    if labels.dim() == 1:
        if labels.is_floating_point() and not torch.equal(labels, labels.round()):
            raise RcigError(f"{path}: 1-D labels must be class indices, found fractional values")
        if labels.min() < 0 or labels.max() >= 2 ** 31:
            raise RcigError(f"{path}: class indices must lie in 0..2**31-1, found {labels.min().item():g}.."
                            f"{labels.max().item():g}")
        labels = labels.long()
    else:
        if labels.shape[1] < 2:
            raise RcigError(f"{path}: soft labels need one column per class (at least 2), got {labels.shape[1]}")
        labels = labels.float()
        if not bool(torch.isfinite(labels).all()):
            raise RcigError(f"{path}: labels overflow float32")
    return Imported(images.float().contiguous(), labels.contiguous(), extra or {})


def _leaf(support: dict, key: str, path) -> np.ndarray:
    """``support[key]`` as an ndarray; one line if it is not array-like (a map, ragged lists)."""
    try:
        return np.asarray(support[key])
    except (TypeError, ValueError):
        raise RcigError(f"{path}: {key} is not an array") from None


def read_flax(path: str | Path, fmt: str) -> Imported:
    """``rcig``: the EMA support (what the reference's eval.py scores); ``frepo``: ``params``.
    A folder is read through its ``checkpoint`` file (flax checkpoints saved by orbax)."""
    path = Path(path) / "checkpoint" if Path(path).is_dir() else path
    state = flax.read_state(path)
    support = flax.find_support(state, "ema_average" if fmt == "rcig" else "params", path)
    images = as_tensor(_leaf(support, "x_proto", path), "x_proto", path)
    if images.dim() != 4:
        raise RcigError(f"{path}: x_proto has shape {tuple(images.shape)}, expected (N, H, W, C)")
    labels = as_tensor(_leaf(support, "y_proto", path), "y_proto", path)
    log_temp = as_tensor(_leaf(support, "log_temp", path), "log_temp", path) if "log_temp" in support else None
    if log_temp is not None and (log_temp.numel() != 1 or not bool(torch.isfinite(log_temp.double()).all())):
        raise RcigError(f"{path}: log_temp must be one finite number, got shape {tuple(log_temp.shape)}")
    extra = {"log_temp": None if log_temp is None else float(log_temp.double().reshape(()))}
    return checked(images.permute(0, 3, 1, 2), labels, path, extra)


def read_mtt(path: str | Path) -> Imported:
    """``images_best.pt`` (or a folder holding it) and ``labels_best.pt`` beside it. Without a
    labels file the labels are left empty (``(0,)``): the MTT release orders images by class,
    ``ipc`` each, and :func:`rcig.interop.class_ordered_labels` fills them in."""
    path = Path(path)
    images_path = path / "images_best.pt" if path.is_dir() else path
    if not images_path.is_file():
        raise RcigError(f"no images_best.pt in {path}")
    images = as_tensor(load_pt(images_path), "images_best.pt", images_path)
    labels_path = images_path.with_name(images_path.name.replace("images", "labels"))
    if labels_path != images_path and labels_path.is_file():
        labels = as_tensor(load_pt(labels_path), labels_path.name, labels_path)
        return checked(images, labels, images_path, {"labels_file": str(labels_path)})
    return checked(images, None, images_path, {"labels_file": None})


def read_dc(path: str | Path) -> Imported:
    """``{'data': [[images, labels], ...]}``: the first pair (DC saves one per experiment). A
    ``soft_labels`` tensor beside ``data`` (rcig's own exports) is preferred to the hard labels."""
    obj = load_pt(path)
    if not isinstance(obj, dict) or "data" not in obj:
        found = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise RcigError(f"{path}: expected a dict with a 'data' entry (the DC layout); found: {found}")
    data = obj["data"]
    if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], (list, tuple)) or len(data[0]) != 2:
        raise RcigError(f"{path}: 'data' must be a list of [images, labels] pairs")
    images = as_tensor(data[0][0], "data[0][0] (images)", path)
    labels = as_tensor(data[0][1], "data[0][1] (labels)", path)
    soft = obj.get("soft_labels")
    if soft is not None:
        labels = as_tensor(soft, "soft_labels", path)
    return checked(images, labels, path, {"sets_in_file": len(data)})


def read_kip(path: str | Path) -> Imported:
    """``.npz`` with ``images`` (N, H, W, C) and ``labels``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            found = list(f.files)
            arrays = {k: np.array(f[k]) for k in ("images", "labels") if k in f.files}
    except ValueError as exc:
        raise RcigError(f"{path}: refused ({str(exc).splitlines()[0][:100]}); rcig never unpickles") from None
    except Exception as exc:  # noqa: BLE001
        raise RcigError(f"{path} is not a readable .npz file ({str(exc).splitlines()[0][:100]})") from None
    if len(arrays) < 2:
        raise RcigError(f"{path}: expected arrays 'images' (N, H, W, C) and 'labels'; found: {', '.join(found) or 'none'}")
    images = as_tensor(arrays["images"], "images", path)
    if images.dim() != 4:
        raise RcigError(f"{path}: images have shape {tuple(images.shape)}, expected (N, H, W, C)")
    return checked(images.permute(0, 3, 1, 2), as_tensor(arrays["labels"], "labels", path), path)


READERS = {"rcig": lambda p: read_flax(p, "rcig"), "frepo": lambda p: read_flax(p, "frepo"),
           "mtt": read_mtt, "dc": read_dc, "kip": read_kip}
