"""Datasets: one entry point, ``load(spec)``, giving uint8 NHWC arrays and class names.

Specs::

    digits               scikit-learn's embedded 8x8 digits (no download; the default)
    fashion_mnist, mnist idx files from --data-dir, /usr/share/datasets/<name>, ~/.cache/rcig
    cifar10, cifar100    binary or python release (folder or .tar.gz), pickles read safely
    tiny_imagenet        the tiny-imagenet-200 folder (val/ is the test split)
    imagefolder:PATH     one subfolder per class (PATH/train + PATH/test if present);
                         imagefolder:PATH?size=32 resizes to 32x32
    npz:PATH             keys x_train, y_train, x_test, y_test (+ class_names)
    hf:NAME              a Hugging Face dataset (needs `pip install rcig[hf]`)

``prepare(spec)`` adds the paper's preprocessing and returns model-space tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rcig.data import sources
from rcig.data.preprocess import Preprocessor, fit_preprocessor
from rcig.errors import RcigError


@dataclass(frozen=True)
class Dataset:
    spec: str
    x_train: np.ndarray  # (N, H, W, C) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[1])


def _validate(spec: str, arrays: dict) -> Dataset:
    """The arrays of a source as a Dataset, checked by :func:`rcig.validate.dataset`."""
    from rcig import validate

    x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    y_train, y_test = np.asarray(y_train).astype(np.int64), np.asarray(y_test).astype(np.int64)
    names = arrays.get("class_names")
    labels = np.concatenate([y_train, y_test])
    num_classes = len(names) if names else (int(labels.max()) + 1 if len(labels) else 0)
    names = list(names) if names else [str(i) for i in range(num_classes)]
    validate.dataset(spec, x_train, y_train, x_test, y_test, num_classes)
    return Dataset(spec, np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test, tuple(names))


def load(spec: str = "digits", data_dir: str | os.PathLike | None = None, *, download: bool = True) -> Dataset:
    """Load a dataset by spec (see the module docstring)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RcigError(f"--data-dir {data_dir} is not a folder" if Path(data_dir).exists() else f"no such folder: {data_dir}")
    kind, _, arg = spec.partition(":")
    if kind in sources.PATH_SPECS:
        if not arg:
            raise RcigError(f"spec '{kind}:' needs a path, e.g. {kind}:/data/my_images")
        arrays = sources.PATH_SPECS[kind](arg)
        path_part, _, query = arg.partition("?")
        canonical = f"{kind}:{Path(path_part).expanduser().resolve()}" + (f"?{query}" if query else "")
        if kind == "hf":
            canonical = spec
        return _validate(canonical, arrays)
    if spec not in sources.NAMED:
        known = ", ".join(list(sources.NAMED) + ["imagefolder:PATH", "npz:PATH", "hf:NAME"])
        raise RcigError(f"unknown dataset '{spec}'; known: {known}")
    return _validate(spec, sources.NAMED[spec].load(Path(data_dir) if data_dir else None, download))


def describe_specs(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """For `rcig datasets`: each spec, whether its files were found, and where."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise RcigError(f"--data-dir {data_dir} is not a folder" if Path(data_dir).exists() else f"no such folder: {data_dir}")
    rows = []
    for name, source in sources.NAMED.items():
        where = source.locate(Path(data_dir) if data_dir else None)
        rows.append({"spec": name, "description": source.description, "found": where is not None,
                     "where": str(where) if where else "not found (" + source.hint + ")"})
    for kind, description in sources.PATH_DESCRIPTIONS.items():
        rows.append({"spec": f"{kind}:PATH" if kind != "hf" else "hf:NAME", "description": description,
                     "found": None, "where": "given by the spec"})
    return rows



@dataclass
class Prepared:
    """A dataset in model space: what the engine and the evaluation consume."""

    dataset: Dataset
    preprocessor: Preprocessor
    x_train: torch.Tensor  # (N, C, H, W) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor


def prepare(spec_or_dataset: str | Dataset = "digits", data_dir: str | os.PathLike | None = None, *,
            download: bool = True, cache_dir: str | os.PathLike | None = None) -> Prepared:
    """A dataset (by spec, or already loaded) in model space, with its fitted preprocessing."""
    dataset = spec_or_dataset if isinstance(spec_or_dataset, Dataset) else load(spec_or_dataset, data_dir,
                                                                                download=download)
    pre = fit_preprocessor(dataset, cache_dir)
    return Prepared(dataset, pre, pre.to_model(dataset.x_train), torch.from_numpy(dataset.y_train),
                    pre.to_model(dataset.x_test), torch.from_numpy(dataset.y_test))


__all__ = ["Dataset", "Prepared", "Preprocessor", "describe_specs", "fit_preprocessor", "load", "prepare"]
