"""Distilled-set files: safetensors (or npz), which hold arrays and text and cannot run code.

A file holds ``images`` (N, C, H, W) float32 in model space, ``labels`` (N, K) float32,
``preprocess/<name>`` arrays (the ZCA matrices of RGB sets) and, as JSON in the
safetensors metadata under "rcig", everything else: dataset spec, ipc, class names, method,
seed, flip, the protocol defaults, the config, the preprocessing statistics, rcig version.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from rcig.atomic import atomic_write
from rcig.data.formats import npz_archive
from rcig.errors import RcigError

FORMAT = "rcig-distilled/1"


@dataclass
class DistilledSet:
    """A distilled set: images and labels in model space, and how to read them.

    ``images`` (N, C, H, W) float32 live in rcig's model space for ``meta["dataset"]``: pixels
    x/255 standardised with the training set's mean and std (per channel for RGB), and for
    RGB sets then ZCA-whitened (:mod:`rcig.data.preprocess`; ``meta["preprocess"]`` says which).
    ``labels`` (N, K) float32 are soft labels centred like the paper's one-hot encoding
    (``one_hot - 1/K``; RCIG learns them) and are targets for an MSE loss on a network's K
    outputs, not class probabilities. ``meta["flip"]``: the set was distilled with the flip
    trick, and a network trained on it should also see its left-right mirror images
    (:meth:`dataset` includes them). :meth:`test_set` gives the real test images in the
    same model space; :meth:`pixels` maps the images back to pixels.
    """

    images: torch.Tensor  # (N, C, H, W) float32, model space
    labels: torch.Tensor  # (N, K) float32
    meta: dict
    preprocess_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        """The number of images stored (the mirrored copies of :meth:`dataset` not counted)."""
        return len(self.images)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        return (f"DistilledSet(dataset={self.meta.get('dataset')!r}, ipc={self.meta.get('ipc')}, "
                f"classes={self.labels.shape[1]}, images={len(self)}x{shape}, method={self.meta.get('method')!r}, "
                f"flip={bool(self.meta.get('flip'))})")

    @property
    def preprocessing_known(self) -> bool:
        """False for a set imported without a dataset (``rcig import`` without --dataset)."""
        return self.meta.get("preprocess", {}).get("kind") != "unknown"

    def preprocessor(self):
        """The :class:`rcig.data.preprocess.Preprocessor` that maps the dataset's pixels to this set's model space."""
        from rcig.data.preprocess import Preprocessor

        if not self.preprocessing_known:
            raise RcigError("this set's preprocessing is unknown (it was imported without --dataset); "
                            "re-import it with: rcig import SOURCE --dataset SPEC --out FILE")
        return Preprocessor.from_state(self.meta["preprocess"], self.preprocess_arrays)

    def dataset(self) -> torch.utils.data.TensorDataset:
        """(image, label) pairs as a network trained on the set should see them: model-space
        images, centred soft labels, and under the flip trick the mirrored copies after them
        (2N pairs), as the paper's evaluation protocol trains."""
        images, labels = self.images, self.labels
        if self.meta.get("flip"):
            images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
        return torch.utils.data.TensorDataset(images, labels)

    def pixels(self) -> torch.Tensor:
        """The images as pixels in [0, 1], (N, C, H, W) float32: the preprocessing undone
        (ZCA, then the standardisation), values outside [0, 1] clipped."""
        return self.preprocessor().to_unit(self.images).clamp(0.0, 1.0)

    def test_set(self, data_dir: str | os.PathLike | None = None) -> torch.utils.data.TensorDataset:
        """The real test split of ``meta["dataset"]`` as (image, class index) pairs, its images
        mapped to model space by this set's own stored preprocessing (the same statistics and
        ZCA matrices as the set's images). ``data_dir``: where the dataset's files are."""
        return real_test_set(self, data_dir)

def make_set(prepared, images: torch.Tensor, labels: torch.Tensor, *, ipc: int, method: str, seed: int,
             flip: bool, protocol: dict, config: dict | None = None, **extra) -> DistilledSet:
    """A DistilledSet of ``images``/``labels`` drawn from ``prepared`` (a rcig.data.Prepared)."""
    import time

    from rcig.version import __version__

    pre_meta, arrays = prepared.preprocessor.state()
    meta = {"dataset": prepared.dataset.spec, "ipc": ipc, "num_classes": prepared.dataset.num_classes,
            "class_names": list(prepared.dataset.class_names), "method": method, "seed": seed, "flip": flip,
            "protocol": protocol, "config": config, "preprocess": pre_meta, "rcig_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    # a file's arrays: on the CPU whatever device made them
    return DistilledSet(images.detach().float().cpu().contiguous(), labels.detach().float().cpu().contiguous(),
                        meta, arrays)


def real_test_set(ds: DistilledSet, data_dir: str | os.PathLike | None = None) -> torch.utils.data.TensorDataset:
    """:meth:`DistilledSet.test_set`: the real test split of the set's dataset, preprocessed as
    the set's images were; a one-line RcigError if the set names no dataset or does not fit it."""
    from rcig.data import load as load_dataset

    if ds.meta.get("dataset") is None:
        raise RcigError("this set names no dataset (it was imported without --dataset); "
                        "re-import it with: rcig import SOURCE --dataset SPEC --out FILE")
    data = load_dataset(ds.meta["dataset"], data_dir)
    if data.num_classes != ds.labels.shape[1] or (data.channels, data.image_size) != tuple(ds.images.shape[1:3]):
        raise RcigError(f"the set holds {ds.labels.shape[1]} classes of {tuple(ds.images.shape[1:])} images; "
                        f"{ds.meta['dataset']} has {data.num_classes} of {(data.channels, data.image_size, data.image_size)}")
    return torch.utils.data.TensorDataset(ds.preprocessor().to_model(data.x_test), torch.from_numpy(data.y_test))


def save(ds: DistilledSet, path: str | os.PathLike) -> None:
    """Write ``ds`` to ``path`` (.safetensors, or .npz), atomically."""
    path = Path(path)
    meta = {**ds.meta, "format": FORMAT}
    tensors = {"images": ds.images.detach().float().contiguous(), "labels": ds.labels.detach().float().contiguous()}
    tensors.update({f"preprocess/{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in ds.preprocess_arrays.items()})
    if path.suffix == ".npz":
        arrays = {k.replace("/", "__"): v.numpy() for k, v in tensors.items()}

        def write(fh):
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
    else:
        from safetensors.torch import save as to_bytes

        def write(fh):
            fh.write(to_bytes(tensors, metadata={"rcig": json.dumps(meta)}))
    atomic_write(path, write)


def load(path: str | os.PathLike) -> DistilledSet:
    """Read a distilled set written by :func:`save`; a one-line RcigError if it is not one."""
    from rcig import validate

    path = validate.input_file(path, "distilled-set file (.safetensors or .npz)")
    try:
        if path.suffix == ".npz":
            npz_archive(path)
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"])) if "meta" in f.files else None
                tensors = {k.replace("__", "/"): torch.from_numpy(f[k]) for k in f.files if k != "meta"}
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("rcig")
                meta = json.loads(raw) if raw else None
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except RcigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a distilled set"
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise RcigError(f"{path} is not a readable distilled set ({first})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RcigError(f"{path} is not an rcig distilled set (no '{FORMAT}' metadata)")
    images, labels = tensors.get("images"), tensors.get("labels")
    if images is None or labels is None:
        raise RcigError(f"{path} lacks the 'images' or 'labels' array")
    arrays = {k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith("preprocess/")}
    validate.distilled_set(images, labels, meta, arrays, str(path))
    return DistilledSet(images.float(), labels.float(), meta, arrays)

