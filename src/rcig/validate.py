"""Input validation at the boundaries: one function per kind of input a user hands rcig.

Each check raises :class:`rcig.errors.RcigError` with a one-line message naming the input and
what is wrong with it, before any work starts; past these checks the rest of the code may
assume well-formed values. The kinds (docs/cli.md's table lists them with what is checked):

* distilled-set files ....... :func:`distilled_set` (on load), :func:`set_fits_dataset` (before scoring)
* datasets .................. :func:`dataset` (on load), :func:`network_fits` (image size vs depth)
* config values ............. in :mod:`rcig.config` (each field's Kind, ranges)
* output paths .............. :func:`output_file`, :func:`output_dir`
* run directories (--resume)  :func:`run_description`, :func:`checkpoint_like`, :func:`log_records`
* command-line numbers ...... :func:`seed`, :func:`minutes`
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rcig.config import AUGMENTATIONS, is_int, is_number
from rcig.errors import RcigError

MAX_SEED = 2 ** 32 - 1  # seeds are drawn into torch generators with offsets; keep them plain 32-bit


# ------------------------------------------------------------------ command-line numbers

def seed(value: int) -> int:
    """A seed in 0 .. 2**32 - 1."""
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        raise RcigError(f"seed must be an integer in 0..{MAX_SEED}, got {value!r}")
    return value


def ipc(value: int) -> int:
    """Images per class: an integer >= 1."""
    if not is_int(value) or value < 1:
        raise RcigError(f"ipc must be a positive integer, got {value!r}")
    return value


def positive(value: float | None, option: str, unit: str) -> float | None:
    """A budget: None (no limit) or a finite number > 0 of ``unit``; else one line naming ``option``."""
    if value is not None and (not is_number(value) or value <= 0):
        raise RcigError(f"{option} must be a number of {unit} > 0, got {value!r}")
    return value


def minutes(value: float | None) -> float | None:
    """A time budget: None (no limit) or a finite number of minutes > 0."""
    return positive(value, "--max-minutes", "minutes")


def memory_gb(value: float | None) -> float | None:
    """A memory budget: None (the device's available memory) or a finite number of GB > 0."""
    return positive(value, "--memory-gb", "GB")


# ------------------------------------------------------------------------ output paths

def _first_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor; RcigError if an ancestor is not a folder."""
    path = Path(os.path.abspath(path))
    for candidate in [path, *path.parents]:
        if candidate.exists():
            if candidate != path and not candidate.is_dir():
                raise RcigError(f"cannot write {path}: {candidate} is a file, not a folder")
            return candidate
    return Path("/")  # pragma: no cover - "/" always exists


def _writable(path: Path, shown: Path) -> None:
    existing = _first_existing(path)
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RcigError(f"cannot write {shown}: no permission to write in {folder}")


def output_file(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    """An output file path: not a folder, one of ``suffixes`` (lower case, with the dot), writable."""
    shown = Path(path)
    if str(path) == "" or shown.is_dir() or str(path).endswith(os.sep):
        raise RcigError(f"{what} {shown} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if shown.suffix.lower() not in suffixes:
        got = f"'{shown.suffix}'" if shown.suffix else "no extension"
        raise RcigError(f"{what} {shown} has {got}; use {' or '.join(suffixes)}")
    _writable(shown, shown)
    return shown


def output_dir(path: str | os.PathLike, what: str) -> Path:
    """An output folder path: an existing folder or a creatable one, writable."""
    shown = Path(path)
    if shown.exists() and not shown.is_dir():
        raise RcigError(f"{what} {shown} is an existing file, not a folder")
    _writable(shown, shown)
    return shown


def input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """An existing regular file: "no such file" or "is a folder" otherwise."""
    path = Path(path)
    if path.is_dir():
        raise RcigError(f"{path} is a folder; expected a {what}")
    if not path.is_file():
        raise RcigError(f"no such file: {path}")
    return path


# ------------------------------------------------------------------ distilled-set files

PREPROCESS_KINDS = ("standardize", "zca", "unknown")  # unknown: imported without --dataset (rcig.interop)


def distilled_set(images: torch.Tensor, labels: torch.Tensor, meta: Any, arrays: dict[str, np.ndarray],
                  where: str) -> None:
    """A distilled set as read from a file: metadata schema, shapes, dtypes, finite values.

    images (N, C, H, W) floating, N >= 1, C in {1, 3}; labels (N, K) floating, K >= 2 (K the
    length of ``class_names`` when given); all finite; ``meta`` names a dataset and holds the
    preprocessing (kind, per-channel mean and std > 0, the ZCA matrices for kind zca).
    """
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise RcigError(f"{where}: {message}")

    need(isinstance(meta, dict), "its rcig metadata is not a JSON object")
    need(images.dim() == 4 and labels.dim() == 2 and len(images) == len(labels),
         f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not fit (expected N x C x H x W and N x K)")
    need(images.is_floating_point() and labels.is_floating_point(),
         f"images and labels must be floating point, got {images.dtype} and {labels.dtype}")
    n, c, h, w = images.shape
    need(n >= 1, "holds no images (zero rows)")
    need(c in (1, 3) and h >= 1 and h == w, f"images must be square with 1 or 3 channels, got {c} x {h} x {w}")
    need(labels.shape[1] >= 2, f"labels must have one column per class (at least 2), got {labels.shape[1]}")
    need(bool(torch.isfinite(images).all()), "images hold NaN or infinite values")
    need(bool(torch.isfinite(labels).all()), "labels hold NaN or infinite values")
    imported = isinstance(meta.get("preprocess"), dict) and meta["preprocess"].get("kind") == "unknown"
    need((meta.get("dataset") is None and imported) or (isinstance(meta.get("dataset"), str) and meta["dataset"] != ""),
         "metadata lacks the dataset spec ('dataset')")
    names = meta.get("class_names")
    if names is not None:
        need(isinstance(names, list) and all(isinstance(x, str) for x in names), "'class_names' must be a list of strings")
        need(len(names) == labels.shape[1], f"labels have {labels.shape[1]} columns but 'class_names' names {len(names)} classes")
    for key, ok, kind in [("ipc", lambda v: is_int(v) and v >= 1, "a positive integer"),
                          ("flip", lambda v: isinstance(v, bool), "true or false"),
                          ("protocol", lambda v: isinstance(v, dict), "an object"),
                          ("method", lambda v: isinstance(v, str), "a string")]:
        need(meta.get(key) is None or ok(meta[key]), f"metadata '{key}' must be {kind}, got {meta.get(key)!r}")
    _protocol(meta.get("protocol") or {}, need)
    _preprocess(meta.get("preprocess"), arrays, c, h, need)


def _protocol(protocol: dict, need) -> None:
    from rcig.models import ARCHITECTURES

    arch = protocol.get("arch", "conv")
    need(arch in ARCHITECTURES, f"protocol arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    for key in ("depth", "width"):
        value = protocol.get(key, 1)
        need(is_int(value) and 1 <= value <= 4096, f"protocol {key} must be a positive integer, got {value!r}")
    augs = protocol.get("augmentations", [])
    need(isinstance(augs, list) and all(a in AUGMENTATIONS for a in augs),
         f"protocol augmentations must be a list drawn from {list(AUGMENTATIONS)}, got {augs!r}")


def _preprocess(pre: Any, arrays: dict[str, np.ndarray], channels: int, size: int, need) -> None:
    need(isinstance(pre, dict), "metadata lacks the preprocessing ('preprocess')")
    need(pre.get("kind") in PREPROCESS_KINDS, f"preprocess kind must be one of {PREPROCESS_KINDS}, got {pre.get('kind')!r}")
    if pre["kind"] == "unknown":  # imported without a dataset (rcig import): nothing to check
        return
    for key in ("mean", "std"):
        values = pre.get(key)
        need(isinstance(values, list) and len(values) in (1, channels) and all(is_number(v) for v in values),
             f"preprocess {key} must be 1 or {channels} finite numbers, got {values!r}")
    need(all(v > 0 for v in pre["std"]), f"preprocess std must be > 0, got {pre['std']}")
    if pre["kind"] != "zca":
        return
    block = pre.get("block")
    need(block is None or (is_int(block) and block >= 1 and size % block == 0),
         f"preprocess block must be null or a divisor of the image size {size}, got {block!r}")
    d = channels * (block or size) ** 2
    for key in ("whiten", "unwhiten"):
        matrix = arrays.get(key)
        need(matrix is not None and matrix.shape == (d, d) and np.issubdtype(matrix.dtype, np.floating)
             and bool(np.isfinite(matrix).all()), f"the ZCA matrix '{key}' must be a finite {d} x {d} float array")


def set_fits_dataset(images: torch.Tensor, labels: torch.Tensor, meta: dict, prepared, where: str) -> None:
    """A distilled set against the dataset it names: classes, image shape, preprocessing."""
    ds = prepared.dataset
    if labels.shape[1] != ds.num_classes:
        raise RcigError(f"{where} has labels for {labels.shape[1]} classes, {meta['dataset']} has {ds.num_classes}")
    if list(ds.class_names) != list(meta.get("class_names") or ds.class_names):
        raise RcigError(f"{where} was made for other classes than {meta['dataset']} has now")
    if tuple(images.shape[1:]) != tuple(prepared.x_train.shape[1:]):
        raise RcigError(f"{where} holds {tuple(images.shape[1:])} images, {meta['dataset']} has "
                        f"{tuple(prepared.x_train.shape[1:])}")
    now = prepared.preprocessor.state()[0]
    stored = meta["preprocess"]
    if stored["kind"] != now["kind"] or any(abs(a - b) > 1e-4 for a, b in zip(stored["mean"], now["mean"])):
        raise RcigError(f"{where} was preprocessed with other statistics than {meta['dataset']} gives now")


# ----------------------------------------------------------------------------- datasets

def dataset(spec: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
            num_classes: int) -> None:
    """A loaded dataset: uint8 N x H x W x C square images, at least 2 classes, at least one
    image in each split, labels in range, images neither constant nor all identical. (Whether each class has
    enough training images for an ipc is checked where images are sampled.)"""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
            raise RcigError(f"{spec}: {split} images must be uint8 N x H x W x C (C 1 or 3), got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise RcigError(f"{spec}: {len(x)} {split} images but {len(y)} labels")
        if len(x) == 0:
            raise RcigError(f"{spec}: the {split} split holds no images")
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise RcigError(f"{spec}: {split} images of {x.shape[1]} x {x.shape[2]} pixels hold nothing")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise RcigError(f"{spec}: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ")
    if x_train.shape[1] != x_train.shape[2]:
        raise RcigError(f"{spec}: images must be square, got {x_train.shape[1]}x{x_train.shape[2]} "
                        "(imagefolder:PATH?size=N resizes)")
    labels = np.concatenate([y_train, y_test])
    if labels.min() < 0 or labels.max() >= num_classes:
        raise RcigError(f"{spec}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    if num_classes < 2:
        raise RcigError(f"{spec}: a dataset needs at least 2 classes, this one has {num_classes}")
    flat = x_train.reshape(len(x_train), -1, x_train.shape[-1])
    if (flat.max(axis=(0, 1)) == flat.min(axis=(0, 1))).any():
        raise RcigError(f"{spec}: the training images are constant (every pixel of a channel has one value); "
                        "there is nothing to learn and standardisation would divide by zero")
    if not (x_train != x_train[:1]).any():
        raise RcigError(f"{spec}: the training images are all the same image; there is nothing to learn "
                        "(and their covariance, which ZCA whitening inverts, is zero)")


def network_fits(arch: str, channels: int, image_size: int, depth: int, where: str) -> None:
    """Whether ``arch`` at ``depth`` accepts ``image_size`` px images: one forward of a narrow twin."""
    from rcig.models import build_model

    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model = build_model(arch, in_channels=channels, num_classes=2, image_size=image_size, depth=depth, width=1)
            model(torch.zeros(1, channels, image_size, image_size))
    except RcigError:
        raise
    except (ValueError, RuntimeError):
        network = f"the conv network of depth {depth}" if arch == "conv" else f"the {arch} network"
        raise RcigError(f"{where}: {image_size} px images are too small for {network} "
                        "(use a smaller depth, or larger images, e.g. imagefolder:PATH?size=32)") from None


# ---------------------------------------------------------------------- run directories

def run_description(text: str, where: str) -> dict[str, Any]:
    """The run.json of a run folder: dataset (str), ipc (int >= 1), seed (int), config (object)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RcigError(f"{where} is not valid JSON ({exc.msg}, line {exc.lineno}); the run cannot be resumed") from None
    if not isinstance(data, dict):
        raise RcigError(f"{where} is not an rcig run description (a JSON object)")
    checks = {"dataset": lambda v: isinstance(v, str) and v != "", "ipc": lambda v: is_int(v) and v >= 1,
              "seed": lambda v: is_int(v) and 0 <= v <= MAX_SEED, "config": lambda v: isinstance(v, dict)}
    for key, ok in checks.items():
        if key not in data or not ok(data[key]):
            raise RcigError(f"{where} is not an rcig run description: '{key}' is missing or malformed")
    return data


def checkpoint_like(template: Any, value: Any, where: str, path: str = "state") -> None:
    """``value`` has the structure of ``template``: same dict keys, tensor shapes and dtypes,
    scalar kinds; lists are checked element-wise against the template's first element."""
    def fail(what: str):
        raise RcigError(f"{where} is not a checkpoint of this run ({path}: {what}); "
                        "delete it to restart from the beginning")

    if isinstance(template, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            fail(f"expected a tensor, found {type(value).__name__}")
        if value.shape != template.shape or value.dtype != template.dtype:
            fail(f"expected {template.dtype} {tuple(template.shape)}, found {value.dtype} {tuple(value.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            fail("holds NaN or infinite values")
    elif isinstance(template, dict):
        if not isinstance(value, dict) or set(value) != set(template):
            fail(f"expected the keys {sorted(map(str, template))}")
        for key in template:
            checkpoint_like(template[key], value[key], where, f"{path}.{key}")
    elif isinstance(template, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            fail("expected a list")
        if template:
            for i, item in enumerate(value):
                checkpoint_like(template[0], item, where, f"{path}[{i}]")
    elif isinstance(template, bool) or template is None:
        if type(value) is not type(template):
            fail(f"expected {type(template).__name__}, found {type(value).__name__}")
    elif isinstance(template, (int, float)):
        if not is_number(value) or (is_int(template) and not is_int(value)):
            fail(f"expected a finite {type(template).__name__}, found {value!r}")


def log_records(text: str, where: str) -> list[dict[str, Any]]:
    """The records of a log.jsonl; a partial last line (a write cut short by a kill) is dropped,
    any other unreadable line is an error."""
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not is_int(record.get("iter")):
                raise ValueError
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break  # cut short by a kill mid-write
            raise RcigError(f"{where}: line {number} is not a log record; the log cannot be matched to the "
                            "checkpoint (move it away to resume without it)") from None
        records.append(record)
    return records


__all__ = ["MAX_SEED", "checkpoint_like", "dataset", "distilled_set", "input_file", "log_records", "minutes",
           "network_fits", "output_dir", "output_file", "run_description", "seed", "set_fits_dataset"]
