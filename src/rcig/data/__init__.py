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

``prepare(spec)`` adds the paper's preprocessing: the training images in model space, the
test images put there when an evaluation asks (:meth:`Prepared.test_images`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rcig.data import sources
from rcig.data.preprocess import Preprocessor, fit_preprocessor
from rcig.errors import RcigError


class DatasetInfo(NamedTuple):
    """What a dataset is apart from its images (what a :class:`Prepared` keeps of the loaded one)."""

    spec: str
    class_names: tuple[str, ...]
    channels: int
    image_size: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


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

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(self.spec, self.class_names, self.channels, self.image_size)


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



@dataclass(frozen=True)
class Prepared:
    """A dataset in model space: what the engine and the evaluation consume. The training
    images are held in model space; the test images as loaded (uint8), put in model space by
    :meth:`test_images` when an evaluation asks, so that a run holds them in float32 only while
    it scores. The loaded training images are not kept."""

    dataset: DatasetInfo
    preprocessor: Preprocessor
    x_train: torch.Tensor  # (N, C, H, W) float32
    y_train: torch.Tensor  # (N,) int64
    test_pixels: np.ndarray  # (M, H, W, C) uint8
    y_test: torch.Tensor  # (M,) int64

    def test_images(self) -> torch.Tensor:
        """The test images in model space, (M, C, H, W) float32: made at each call (the
        preprocessing of :func:`prepare`'s training images), held only by the caller."""
        return self.preprocessor.to_model(self.test_pixels)


def prepare(spec_or_dataset: str | Dataset = "digits", data_dir: str | os.PathLike | None = None, *,
            download: bool = True, cache_dir: str | os.PathLike | None = None) -> Prepared:
    """A dataset (by spec, or already loaded) in model space, with its fitted preprocessing."""
    dataset = spec_or_dataset if isinstance(spec_or_dataset, Dataset) else load(spec_or_dataset, data_dir,
                                                                                download=download)
    pre = fit_preprocessor(dataset, cache_dir)
    # its own buffer: a view would keep the source's whole array (the training images too) alive
    test = dataset.x_test if dataset.x_test.base is None else dataset.x_test.copy()
    return Prepared(dataset.info, pre, pre.to_model(dataset.x_train), torch.from_numpy(dataset.y_train),
                    test, torch.from_numpy(dataset.y_test))


__all__ = ["Dataset", "DatasetInfo", "Prepared", "Preprocessor", "describe_specs", "fit_preprocessor", "load", "prepare"]
