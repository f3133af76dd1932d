r"""The paper's preprocessing and its exact inverse.

* Gray sets:  ``x/255``, then ``(x - mean) / std`` with scalar statistics of the training set.
* RGB sets:   ``x/255``, per-channel ``(x - mean_c) / std_c``, then ZCA whitening
  ``z = W x`` with ``W = U diag((lambda + reg)^-1/2) U^T`` from the training covariance
  ``U diag(lambda) U^T`` and ``reg = 0.1 * trace(cov) / d``. The inverse keeps
  ``W^-1 = U diag((lambda + reg)^1/2) U^T`` so distilled images can be viewed.
  Images above 64 px get a block ZCA: an independent ZCA per 32x32 patch (d = 3,072 each)
  instead of one d = 49,152 covariance.

Fitted statistics are cached under ``~/.cache/rcig/preprocess`` (``$RCIG_CACHE_DIR``),
keyed by the spec and a hash of the training images.

Memory: the fit reads the uint8 images a chunk at a time (:func:`chunk_images`) and holds, besides them, one chunk
and the ``d x d`` float64 matrices (:func:`zca_peak_bytes`); :meth:`Preprocessor.to_model`
writes its chunks into the one float32 output. Preparing a dataset thus peaks at its uint8
images, one float32 copy of them and a chunk, or at the fit's matrices, whichever is larger.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rcig.atomic import atomic_write
from rcig.data.sources import cache_root
from rcig.errors import RcigError

ZCA_REG = 0.1
BLOCK = 32  # patch size of the block ZCA for large images
CHUNK = 8192  # images converted at a time by the fit and by to_model, at most ...
CHUNK_VALUES = 8192 * 3 * 32 * 32  # ... and at most this many values (fewer images above 32 px RGB)


def chunk_images(d: int) -> int:
    """Images of ``d`` values each converted at a time: ``min(CHUNK, CHUNK_VALUES // d)``, at
    least 1 (8,192 up to 32 px RGB, 2,048 at 64 px, 512 at 128 px: 100 MB of float32)."""
    return max(1, min(CHUNK, CHUNK_VALUES // d))


class Preprocessor:
    """Maps uint8 NHWC images to float32 NCHW model space and back."""

    def __init__(self, kind: str, mean: np.ndarray, std: np.ndarray, whiten: np.ndarray | None = None,
                 unwhiten: np.ndarray | None = None, block: int | None = None):
        self.kind, self.mean, self.std = kind, np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.whiten, self.unwhiten, self.block = whiten, unwhiten, block

    # -- whitening on (N, C, H, W) tensors, whole image or per block ------------------
    def _apply(self, x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(matrix)
        n, c, h, w = x.shape
        if self.block is None:
            return (x.reshape(n, -1) @ m.T).reshape(n, c, h, w)
        b = self.block
        patches = x.reshape(n, c, h // b, b, w // b, b).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, c * b * b)
        patches = patches @ m.T
        return patches.reshape(n, h // b, w // b, c, b, b).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)

    def standardized(self, x: np.ndarray, batch: int) -> Iterator[torch.Tensor]:
        """uint8 (N, H, W, C) -> float32 (b, C, H, W) chunks of ``batch`` images, in order:
        ``(x/255 - mean_c) / std_c``, not whitened."""
        mean = torch.from_numpy(self.mean).view(1, -1, 1, 1)
        std = torch.from_numpy(self.std).view(1, -1, 1, 1)
        for i in range(0, len(x), batch):
            chunk = torch.from_numpy(np.array(x[i:i + batch])).permute(0, 3, 1, 2).float() / 255.0
            yield (chunk - mean) / std

    def to_model(self, x: np.ndarray, batch: int | None = None) -> torch.Tensor:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W), ``batch`` images at a time (None:
        :func:`chunk_images`) written into the output (no second copy of it)."""
        if len(x) == 0:
            return torch.empty(0)
        n, h, w, c = x.shape
        batch = batch or chunk_images(h * w * c)
        # one channel: the strides of a permuted (N, H, W, 1) array, (HW, 1, W, 1), as the chunks
        # have them; torch's CPU convolutions take such a tensor as channels-last, which is faster
        # here and decides the float summation order of every gray run
        out = (torch.empty((n, h, w, 1)).permute(0, 3, 1, 2) if c == 1
               else torch.empty((n, c, h, w), dtype=torch.float32))
        for i, chunk in zip(range(0, n, batch), self.standardized(x, batch)):
            out[i:i + len(chunk)] = chunk if self.whiten is None else self._apply(chunk, self.whiten)
        return out

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) in model space -> float32 (N, C, H, W) pixels x/255 (the exact
        inverse of :meth:`to_model`'s maths, not clipped: distilled images may leave [0, 1])."""
        x = x.detach().float().cpu()
        if self.unwhiten is not None:
            x = self._apply(x, self.unwhiten)
        return x * torch.from_numpy(self.std).view(1, -1, 1, 1) + torch.from_numpy(self.mean).view(1, -1, 1, 1)

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        """float (N, C, H, W) in model space -> uint8 (N, H, W, C), clipped to 0..255."""
        return (self.to_unit(x) * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()

    # -- storage -----------------------------------------------------------------------
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        meta = {"kind": self.kind, "mean": self.mean.tolist(), "std": self.std.tolist(), "block": self.block,
                "zca_reg": ZCA_REG if self.kind == "zca" else None}
        arrays = {} if self.unwhiten is None else {"unwhiten": self.unwhiten, "whiten": self.whiten}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: dict[str, np.ndarray]) -> "Preprocessor":
        if meta.get("kind") == "zca" and "unwhiten" not in arrays:
            raise RcigError("preprocessing state lacks the ZCA matrices")
        return cls(meta["kind"], np.array(meta["mean"]), np.array(meta["std"]), arrays.get("whiten"),
                   arrays.get("unwhiten"), meta.get("block"))


class RowMoments(NamedTuple):
    """Float64 moments of rows ``r_i`` in R^d, i = 1..N: ``mean = sum_i r_i / N`` (d,) and the
    (biased) covariance ``cov = sum_i (r_i - mean)(r_i - mean)^T / N`` (d, d)."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def row_moments(chunks: Callable[[], Iterable[torch.Tensor]]) -> RowMoments:
    """The moments of the rows of every (b, d) chunk that ``chunks()`` yields, in two passes,
    each in float64 over one chunk at a time: the mean, then the centred products
    ``sum_chunks (R - mean)^T (R - mean)``. The same sums as on the whole (N, d) array in
    float64 up to the order of summation (chunk by chunk, not in one product), so equal to it
    to float64 rounding; no (N, d) array is made."""
    total, count = None, 0
    for rows in chunks():
        part = rows.double().sum(0)
        total, count = (part if total is None else total + part), count + len(rows)
    if not count:
        raise RcigError("ZCA whitening needs at least one training image")
    mean = total / count
    cov = torch.zeros(len(mean), len(mean), dtype=torch.float64)
    for rows in chunks():
        centred = rows.double().sub_(mean)
        cov.addmm_(centred.T, centred)
        del rows, centred
    return RowMoments(mean, cov.div_(count), count)


def zca_matrices(cov: torch.Tensor, reg: float = ZCA_REG) -> tuple[np.ndarray, np.ndarray]:
    """(W, W^-1), float32 (d, d), from a float64 covariance ``cov`` (d, d) = U diag(L) U^T:
    ``W = U (L + r)^-1/2 U^T``, ``W^-1 = U (L + r)^1/2 U^T`` with ``r = reg * trace(cov) / d``
    (negative eigenvalues of rounding clamped to 0). ``cov`` is used up (it is let go as soon
    as it is decomposed: about 4 d^2 float64 at once, :func:`zca_peak_bytes`)."""
    shift = reg * torch.trace(cov) / cov.shape[0]
    eigenvalues, u = torch.linalg.eigh(cov)
    del cov
    eigenvalues = eigenvalues.clamp(min=0) + shift
    whiten = ((u * eigenvalues.rsqrt()) @ u.T).float().numpy()
    unwhiten = ((u * eigenvalues.sqrt()) @ u.T).float().numpy()
    return whiten, unwhiten


def zca_peak_bytes(d: int) -> int:
    """Bytes the fit holds at once besides the images and a chunk, for a whitening of
    dimension ``d``: the float64 covariance and LAPACK's eigendecomposition of it (its
    eigenvectors and a workspace of about 2 d^2), about 4 d^2 float64 (d = 12,288: 4.8 GB)."""
    return 4 * 8 * d * d


def preparation_peak_bytes(train_images: int, test_images: int, channels: int, image_size: int) -> int:
    """Bytes :func:`rcig.data.prepare` holds at its peak besides the process, on the CPU, when
    the fit is not cached: the loaded uint8 images and the larger of the fit and the
    conversion of the training images, with ``d = channels x H x W``, ``B`` images a chunk
    (:func:`chunk_images`, at most N_train)::

        peak    = (N_train + N_test) d  +  max(fit, convert)
        fit     = 8 N_train d                                gray: the float32 images and numpy's
                                                             centred copy of them for the std
                = max(8 d_w^2 + 16 B d, zca_peak_bytes(d_w))  RGB: the covariance and a chunk,
                                                             then the eigendecomposition
        convert = 4 N_train d + 16 B d                       to_model's output and a chunk

    with ``d_w = d``, or ``channels x BLOCK^2`` for the block ZCA (above 64 px). A chunk holds
    at most four of its float32 arrays at once (counted from the code: the standardisation's
    input, difference and quotient, or the block ZCA's patches, their product and its layout
    back, or a float32 chunk and its float64 rows): ``16 B d``."""
    d = channels * image_size ** 2
    chunk = 16 * min(chunk_images(d), train_images) * d
    if channels == 1:
        fit_bytes = 8 * train_images * d
    else:
        d_w = d if image_size <= 64 else channels * BLOCK ** 2
        fit_bytes = max(8 * d_w * d_w + chunk, zca_peak_bytes(d_w))
    return (train_images + test_images) * d + max(fit_bytes, 4 * train_images * d + chunk)


def channel_moments(x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation, float32 (C,), of ``x/255`` over uint8
    (N, H, W, C) images, ``batch`` images at a time: numpy's ``mean``/``std`` over axes
    (0, 1, 2) of the whole float32 array, the same sums in the same order (float32 running
    sums over the pixels in order, divided in float64 by the count), so bit-identical to
    them, with no float32 copy of the images."""
    c = x.shape[-1]
    count = x.size // c

    def pixels() -> Iterator[np.ndarray]:
        for i in range(0, len(x), batch):
            yield x[i:i + batch].reshape(-1, c).astype(np.float32) / np.float32(255.0)

    def running_sum(parts: Iterable[np.ndarray]) -> np.ndarray:
        total = np.zeros(c, np.float32)
        for part in parts:  # the carried sum first, then the rows: one sequential reduction
            total = np.add.reduce(np.concatenate([total[None], part]), axis=0)
        return total

    mean = (running_sum(pixels()) / np.float64(count)).astype(np.float32)
    variance = (running_sum(np.square(p - mean) for p in pixels()) / np.float64(count)).astype(np.float32)
    return mean, np.sqrt(variance)


def fit(x_train: np.ndarray, batch: int | None = None) -> Preprocessor:
    """Fit the paper's preprocessing on uint8 (N, H, W, C) training images, ``batch`` images
    at a time for RGB (None: :func:`chunk_images`; the module docstring's memory)."""
    if x_train.shape[-1] == 1:
        x = x_train.astype(np.float32) / 255.0
        return Preprocessor("standardize", [x.mean()], [x.std()])
    _, h, w, c = x_train.shape
    batch = batch or chunk_images(h * w * c)
    mean, std = channel_moments(x_train, batch)
    pre = Preprocessor("standardize", mean, std)
    block = BLOCK if h > 64 else None
    if block is not None and (h % block or w % block):
        raise RcigError(f"block ZCA needs a size divisible by {block}, got {h}x{w}")

    def rows() -> Iterator[torch.Tensor]:
        """The whitening's rows: (b, C H W) per image, or (b H W / BLOCK^2, C BLOCK^2) per patch."""
        for z in pre.standardized(x_train, batch):
            n = len(z)
            if block is None:
                yield z.reshape(n, -1)
            else:
                yield z.reshape(n, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5).reshape(
                    -1, c * block * block)

    whiten, unwhiten = zca_matrices(row_moments(rows).cov)
    return Preprocessor("zca", mean, std, whiten, unwhiten, block)


def _cache_path(spec: str, x_train: np.ndarray, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else cache_root() / "preprocess"
    digest = hashlib.sha256(np.ascontiguousarray(x_train).data).hexdigest()[:16]  # the bytes, not a copy
    safe = "".join(ch if ch.isalnum() else "_" for ch in spec)[-60:]
    return root / f"{safe}-{digest}.npz"


def fit_preprocessor(dataset, cache_dir: str | os.PathLike | None = None) -> Preprocessor:
    """Fit (or load from the on-disk cache) the preprocessing of ``dataset``."""
    path = _cache_path(dataset.spec, dataset.x_train, cache_dir)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                return Preprocessor.from_state(meta, {k: f[k] for k in f.files if k != "meta"})
        except Exception:  # noqa: BLE001 - a broken cache entry is refitted
            pass
    pre = fit(dataset.x_train)
    meta, arrays = pre.state()
    try:
        atomic_write(path, lambda fh: np.savez(fh, meta=np.array(json.dumps(meta)), **arrays))
    except OSError:
        pass  # a read-only cache only costs a refit next time
    return pre
