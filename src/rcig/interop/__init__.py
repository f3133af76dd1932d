"""Distilled sets from and to other tools' formats.

    ds = import_set(path, dataset="cifar10")      # rcig | frepo | mtt | dc | kip -> rcig.io.DistilledSet
    export(ds, "mtt", "out/")                     # mtt | dc | kip | imagefolder | npz

Import keeps the images exactly as stored. With a dataset, the file records that dataset's
preprocessing (rcig's: standardisation, + ZCA for RGB), i.e. it asserts the images live in
rcig's model space for that dataset, which holds for rcig's own exports and for the RCIG and
FRePo releases (same preprocessing). Sets stored as plain pixels or as per-channel normalised
pixels (DC, DSA, DM, MTT without ZCA) say so with ``stored_as`` ("unit" = x/255,
"norm:MEAN/STD"), and are mapped into rcig's model space through the pixels. Without a
dataset, the file's preprocessing is recorded as unknown: ``rcig eval`` then asks for a
re-import with ``--dataset`` (it needs the test set anyway), ``rcig show`` stretches contrast.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rcig.errors import RcigError
from rcig.interop.exporters import EXPORTERS, export
from rcig.interop.readers import READERS, Imported, load_pt

IMPORT_FORMATS = tuple(READERS)
UNKNOWN_PREPROCESS = {"kind": "unknown"}


# ----------------------------------------------------------------------- detection

def _zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def _torch_kind(obj, path: Path) -> str:
    if isinstance(obj, dict) and "data" in obj:
        return "dc"
    if isinstance(obj, torch.Tensor):
        return "mtt"
    raise RcigError(f"cannot tell the format of {path}: a .pt file holding a {type(obj).__name__}; pass --format")


def detect_format(path: str | Path) -> str:
    """The import format of ``path`` from its content (never its name alone)."""
    path = Path(path)
    if path.is_dir():
        if (path / "images_best.pt").is_file():
            return "mtt"
        if (path / "checkpoint").is_file():  # a flax checkpoint saved as a folder (orbax, aggregate file)
            return detect_format(path / "checkpoint")
        raise RcigError(f"{path} is a folder without images_best.pt or a flax 'checkpoint' file; pass a file")
    if not path.is_file():
        raise RcigError(f"no such file: {path}")
    head = path.read_bytes()[:16]
    if head.startswith(b"PK\x03\x04"):  # zip: numpy .npz or torch's zip .pt
        names = _zip_names(path)
        if any(n.endswith("data.pkl") for n in names):
            return _torch_kind(load_pt(path), path)
        if "meta.npy" in names:
            raise RcigError(f"{path} is already an rcig distilled set: use it directly (rcig eval {path})")
        return "kip"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle: legacy torch format
        return _torch_kind(load_pt(path), path)
    if head[:1] and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):  # a msgpack map
        from rcig.interop.flax import read_state

        return "rcig" if "ema_average" in read_state(path) else "frepo"
    if len(head) > 8 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        from rcig.io import load

        load(path)  # one line if it is not rcig's
        raise RcigError(f"{path} is already an rcig distilled set: use it directly (rcig eval {path})")
    raise RcigError(f"cannot tell the format of {path}; pass --format ({', '.join(IMPORT_FORMATS)})")


def read(path: str | Path, fmt: str = "auto") -> tuple[str, Imported]:
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise RcigError(f"unknown import format '{fmt}'; choose auto, {', '.join(IMPORT_FORMATS)}")
    if not Path(path).exists():
        raise RcigError(f"no such file: {path}")
    return fmt, READERS[fmt](path)


# ------------------------------------------------------------- how the images are stored

class StoredAs(NamedTuple):
    """How a file's images relate to pixels p in [0, 1]: ``model`` (rcig's model space),
    ``unit`` (x = p) or ``norm`` (x = (p - mean_c) / std_c)."""

    kind: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def parse_stored_as(text: str) -> StoredAs:
    """"model" | "unit" | "norm:M1,M2,M3/S1,S2,S3" (one value each for gray sets)."""
    if text in ("model", "unit"):
        return StoredAs(text)
    if text.startswith("norm:") and "/" in text:
        mean, _, std = text[5:].partition("/")
        try:
            m, s = tuple(float(v) for v in mean.split(",")), tuple(float(v) for v in std.split(","))
        except ValueError:
            m = s = ()
        if m and len(m) == len(s) and all(v > 0 for v in s):
            return StoredAs("norm", m, s)
    raise RcigError(f"--stored-as must be model, unit or norm:MEAN/STD (e.g. norm:0.4914,0.4822,0.4465/"
                    f"0.247,0.243,0.261), got '{text}'")


def to_model_space(images: torch.Tensor, stored: StoredAs, preprocessor) -> torch.Tensor:
    """Map stored images into rcig's model space: through pixels unless already there."""
    if stored.kind == "model":
        return images
    x = images
    if stored.kind == "norm":
        if len(stored.mean) not in (1, images.shape[1]):
            raise RcigError(f"--stored-as gives {len(stored.mean)} channel statistics for {images.shape[1]}-channel images")
        x = x * torch.tensor(stored.std).view(1, -1, 1, 1) + torch.tensor(stored.mean).view(1, -1, 1, 1)
    return preprocessor.to_model((x * 255.0).permute(0, 2, 3, 1).numpy().astype(np.float32))


# ------------------------------------------------------------------------- conversion

def centred_labels(labels: torch.Tensor, num_classes: int | None, n_images: int, path) -> torch.Tensor:
    """(N, K) float labels as stored; class indices -> centred one-hot (rcig's encoding);
    no labels (MTT without labels_best.pt) -> class-ordered, N / K images per class."""
    from rcig.data.sampling import centred_one_hot

    if labels.dim() == 2:
        if num_classes is not None and labels.shape[1] != num_classes:
            raise RcigError(f"{path}: labels have {labels.shape[1]} columns, the dataset has {num_classes} classes")
        return labels.float()
    if labels.numel() == 0:
        if num_classes is None:
            raise RcigError(f"{path}: no labels_best.pt beside it; give --dataset so the labels can be taken "
                            "as class-ordered (N / classes images each), as the MTT release stores them")
        if n_images % num_classes:
            raise RcigError(f"{path}: {n_images} images cannot be {num_classes} class-ordered groups")
        labels = torch.arange(num_classes).repeat_interleave(n_images // num_classes)
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    if k < 2:
        raise RcigError(f"{path}: the labels name a single class; a set needs at least 2")
    if int(labels.max()) >= k:
        raise RcigError(f"{path}: class index {int(labels.max())} is out of range for {k} classes")
    return centred_one_hot(labels, k)


def protocol_for(images: torch.Tensor) -> tuple[dict, bool]:
    """The protocol defaults and flip trick of the paper's preset for this image shape."""
    from rcig.config import paper_preset

    cfg = paper_preset(int(images.shape[2]), int(images.shape[1]))
    return cfg.protocol(), bool(cfg.flip and images.shape[1] == 3)


def to_distilled_set(imported: Imported, fmt: str, source: str | Path, *, dataset: str | None = None,
                     data_dir: str | None = None, stored_as: str = "model", flip: bool | None = None):
    """An :class:`rcig.io.DistilledSet` of ``imported``; see the module docstring. It passes
    the checks of :func:`rcig.load` (:func:`rcig.validate.distilled_set`), so what is saved loads.

    ``flip`` (the flip trick at evaluation) defaults to the paper's preset for RCIG
    checkpoints (on for RGB) and off for every other format, whose tools do not use it.
    """
    from rcig.version import __version__
    from rcig.io import DistilledSet, make_set

    stored = parse_stored_as(stored_as)
    protocol, preset_flip = protocol_for(imported.images)
    flip = (preset_flip and fmt == "rcig") if flip is None else flip
    extra = {"source": str(source), "source_format": fmt, "stored_as": stored_as,
             **{k: v for k, v in imported.extra.items() if v is not None}}
    n = len(imported.images)
    if dataset is None:
        if stored.kind != "model":
            raise RcigError("--stored-as unit/norm maps images through a dataset's preprocessing: give --dataset")
        labels = centred_labels(imported.labels, None, n, source)
        k = labels.shape[1]
        meta = {"dataset": None, "ipc": n // k if n % k == 0 else None, "num_classes": k,
                "class_names": [str(i) for i in range(k)], "method": f"{fmt} (imported)", "seed": None,
                "flip": flip, "protocol": protocol, "config": None, "preprocess": dict(UNKNOWN_PREPROCESS),
                "rcig_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
        return _valid(DistilledSet(imported.images, labels, meta, {}), source)
    from rcig.data import prepare

    prepared = prepare(dataset, data_dir)
    want = tuple(prepared.x_train.shape[1:])
    if tuple(imported.images.shape[1:]) != want:
        raise RcigError(f"{source} holds {tuple(imported.images.shape[1:])} images (C, H, W); {dataset} has {want}")
    k = prepared.dataset.num_classes
    labels = centred_labels(imported.labels, k, n, source)
    images = to_model_space(imported.images, stored, prepared.preprocessor)
    return _valid(make_set(prepared, images, labels, ipc=n // k if n % k == 0 else None, method=f"{fmt} (imported)",
                           seed=None, flip=flip, protocol=protocol, **extra), source)


def _valid(ds, source):
    """``ds`` if :func:`rcig.load` would accept it once saved; its one-line RcigError if not."""
    from rcig import validate

    validate.distilled_set(ds.images, ds.labels, ds.meta, ds.preprocess_arrays, str(source))
    return ds


def import_set(path: str | Path, format: str = "auto", *, dataset: str | None = None, data_dir: str | None = None,
               stored_as: str = "model", flip: bool | None = None):
    """A distilled set made by another tool, read from ``path`` (format "auto" detects it from
    the content; else one of :data:`IMPORT_FORMATS`), as an :class:`rcig.io.DistilledSet`:
    :func:`read` then :func:`to_distilled_set` (see both, and the module docstring)."""
    fmt, imported = read(path, format)
    return to_distilled_set(imported, fmt, path, dataset=dataset, data_dir=data_dir, stored_as=stored_as, flip=flip)


__all__ = ["EXPORTERS", "IMPORT_FORMATS", "Imported", "StoredAs", "UNKNOWN_PREPROCESS", "detect_format", "export",
           "import_set", "parse_stored_as", "read", "to_distilled_set"]
