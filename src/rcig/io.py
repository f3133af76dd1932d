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

from rcig.atomic import atomic_write
from rcig.errors import RcigError

FORMAT = "rcig-distilled/1"


@dataclass
class DistilledSet:
    images: torch.Tensor  # (N, C, H, W) float32, model space
    labels: torch.Tensor  # (N, K) float32
    meta: dict
    preprocess_arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def preprocessing_known(self) -> bool:
        """False for a set imported without a dataset (``rcig import`` without --dataset)."""
        return self.meta.get("preprocess", {}).get("kind") != "unknown"

    def preprocessor(self):
        from rcig.data.preprocess import Preprocessor

        if not self.preprocessing_known:
            raise RcigError("this set's preprocessing is unknown (it was imported without --dataset); "
                            "re-import it with: rcig import SOURCE --dataset SPEC --out FILE")
        return Preprocessor.from_state(self.meta["preprocess"], self.preprocess_arrays)


def make_set(prepared, images: torch.Tensor, labels: torch.Tensor, *, ipc: int, method: str, seed: int,
             flip: bool, protocol: dict, config: dict | None = None, **extra) -> DistilledSet:
    """A DistilledSet of ``images``/``labels`` drawn from ``prepared`` (a rcig.data.Prepared)."""
    import time

    from rcig import __version__

    pre_meta, arrays = prepared.preprocessor.state()
    meta = {"dataset": prepared.dataset.spec, "ipc": ipc, "num_classes": prepared.dataset.num_classes,
            "class_names": list(prepared.dataset.class_names), "method": method, "seed": seed, "flip": flip,
            "protocol": protocol, "config": config, "preprocess": pre_meta, "rcig_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    # a file's arrays: on the CPU whatever device made them
    return DistilledSet(images.detach().float().cpu().contiguous(), labels.detach().float().cpu().contiguous(),
                        meta, arrays)


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
            npz_magic(path)
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


def npz_magic(path: Path) -> None:
    """RcigError unless ``path`` starts like a zip archive (what .npz files are)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise RcigError(f"{path} holds a single .npy array, not an .npz archive of named arrays")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise RcigError(f"{path} is not an .npz archive (not a zip file)")
