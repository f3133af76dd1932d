"""Readers for the standard file formats of image datasets. Each returns uint8 NHWC arrays.

None of them executes code from a file: idx and CIFAR binaries are parsed, CIFAR's python
pickles go through :class:`RestrictedUnpickler`, npz files load with ``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from rcig.errors import RcigError

# ------------------------------------------------------------------------------- idx


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format), gzipped or raw: magic 0x0000 0x08 ndim, then big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise RcigError(f"cannot read {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise RcigError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise RcigError(f"{path} is truncated or corrupt: {len(data)} bytes, header says {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four idx files in ``folder`` (each .gz or raw), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                found[key] = folder / name
                break
        else:
            return None
    return found


def load_idx_folder(folder: Path) -> dict[str, np.ndarray]:
    files = find_idx_files(folder)
    if files is None:
        raise RcigError(f"{folder} lacks the four idx files ({', '.join(IDX_FILES.values())})")
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise RcigError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match")
        arrays[f"x_{split}"] = x[..., None]
        arrays[f"y_{split}"] = y.astype(np.int64)
    return arrays


# ----------------------------------------------------------------------------- CIFAR


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data only (dicts, lists, bytes, str, numbers): any import is refused.

    CIFAR's python batches are protocol-2 pickles of dicts whose values are bytes, lists and
    (in some copies) numpy arrays; arrays are allowed through numpy's own reconstruction
    functions and nothing else.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise RcigError(f"refusing to load a pickle that wants to import {module}.{name}")


def safe_unpickle(data: bytes) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RcigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise RcigError(f"cannot parse pickle: {exc}") from None


def _key(d: dict, name: str):
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise RcigError(f"CIFAR batch lacks the key '{name}'")


def cifar_python_batch(data: bytes, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(data)
    if not isinstance(batch, dict):
        raise RcigError("CIFAR batch is not a dict")
    x = np.asarray(_key(batch, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = np.asarray(_key(batch, label_key), dtype=np.int64)
    return x, y


def cifar_binary_batch(data: bytes, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Records of ``label_bytes`` label bytes (fine label last) + 3072 pixel bytes (CHW)."""
    record = label_bytes + 3072
    if len(data) % record:
        raise RcigError(f"CIFAR binary batch of {len(data)} bytes is not a multiple of {record}")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    x = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), rows[:, label_bytes - 1].astype(np.int64)


class FileSource:
    """Files read either from a folder or from inside a .tar.gz, by their base name."""

    def __init__(self, root: Path):
        self.root = root
        self._members = None
        if root.is_file():
            try:
                with tarfile.open(root, "r:*") as tar:
                    self._members = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                raise RcigError(f"cannot read archive {root}: {exc}") from None

    def has(self, name: str) -> bool:
        return name in self._members if self._members is not None else (self.root / name).is_file()

    def read(self, name: str) -> bytes:
        if not self.has(name):
            raise RcigError(f"{self.root} lacks {name}: an incomplete copy of the dataset?")
        if self._members is not None:
            return self._members[name]
        return (self.root / name).read_bytes()


def load_cifar(source: FileSource, classes: int) -> dict[str, np.ndarray] | None:
    """CIFAR-10/100 from the binary or python release in ``source``; None if neither is there."""
    if classes == 10:
        if source.has("data_batch_1.bin"):
            parts = [cifar_binary_batch(source.read(f"data_batch_{i}.bin"), 1) for i in range(1, 6)]
            test = cifar_binary_batch(source.read("test_batch.bin"), 1)
            names = source.read("batches.meta.txt").decode().split() if source.has("batches.meta.txt") else None
        elif source.has("data_batch_1"):
            parts = [cifar_python_batch(source.read(f"data_batch_{i}"), "labels") for i in range(1, 6)]
            test = cifar_python_batch(source.read("test_batch"), "labels")
            names = _pickled_names(source, "batches.meta", "label_names")
        else:
            return None
    else:
        if source.has("train.bin"):
            parts = [cifar_binary_batch(source.read("train.bin"), 2)]
            test = cifar_binary_batch(source.read("test.bin"), 2)
            names = source.read("fine_label_names.txt").decode().split() if source.has("fine_label_names.txt") else None
        elif source.has("train"):
            parts = [cifar_python_batch(source.read("train"), "fine_labels")]
            test = cifar_python_batch(source.read("test"), "fine_labels")
            names = _pickled_names(source, "meta", "fine_label_names")
        else:
            return None
    return {"x_train": np.concatenate([p[0] for p in parts]), "y_train": np.concatenate([p[1] for p in parts]),
            "x_test": test[0], "y_test": test[1], "class_names": names}


def _pickled_names(source: FileSource, file: str, key: str):
    if not source.has(file):
        return None
    meta = safe_unpickle(source.read(file))
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _key(meta, key)]


# ------------------------------------------------------------------------------- npz


def npz_archive(path: Path) -> None:
    """RcigError unless ``path`` starts like a zip archive (what .npz files are)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"\x93NUMPY"):
        raise RcigError(f"{path} holds a single .npy array, not an .npz archive of named arrays")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise RcigError(f"{path} is not an .npz archive (not a zip file)")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """keys x_train, y_train, x_test, y_test (+ optional class_names); HxW or HxWxC uint8."""
    from rcig import validate

    validate.input_file(path, ".npz dataset file")
    npz_archive(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        if "pickle" in first:
            first = "an array holds Python objects, which rcig does not load"
        raise RcigError(f"cannot read {path} as .npz: {first}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise RcigError(f"{path} lacks the key(s) {', '.join(missing)} (has {', '.join(arrays) or 'none'})")
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise RcigError(f"{path}: x_{split} must be uint8 images, got {x.dtype}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise RcigError(f"{path}: x_{split} must be N x H x W or N x H x W x C (C 1 or 3), got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise RcigError(f"{path}: y_{split} must be {len(x)} integer labels, got {y.dtype} {y.shape}")
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise RcigError(f"{path}: train images {out['x_train'].shape[1:]} and test images "
                        f"{out['x_test'].shape[1:]} differ in shape")
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or not (names.dtype.kind in "UiuS"):
            raise RcigError(f"{path}: class_names must be a 1-d array of strings, got {names.dtype} {names.shape}")
        out["class_names"] = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names.tolist()]
    return out
