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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from rcig.atomic import atomic_write
from rcig.data.sources import cache_root
from rcig.errors import RcigError

ZCA_REG = 0.1
BLOCK = 32  # patch size of the block ZCA for large images


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

    def to_model(self, x: np.ndarray, batch: int = 8192) -> torch.Tensor:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W)."""
        out = []
        mean = torch.from_numpy(self.mean).view(1, -1, 1, 1)
        std = torch.from_numpy(self.std).view(1, -1, 1, 1)
        for i in range(0, len(x), batch):
            chunk = torch.from_numpy(np.array(x[i:i + batch])).permute(0, 3, 1, 2).float() / 255.0
            chunk = (chunk - mean) / std
            if self.whiten is not None:
                chunk = self._apply(chunk, self.whiten)
            out.append(chunk.contiguous())
        return torch.cat(out) if out else torch.empty(0)

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


def zca_matrices(x: torch.Tensor, reg: float = ZCA_REG) -> tuple[np.ndarray, np.ndarray]:
    """(W, W^-1) for rows ``x`` (N, d), in float64: W = U (L + reg)^-1/2 U^T."""
    x = x.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / x.shape[0]
    eigenvalues, u = torch.linalg.eigh(cov)
    eigenvalues = eigenvalues.clamp(min=0) + reg * torch.trace(cov) / cov.shape[0]
    whiten = (u * eigenvalues.rsqrt()) @ u.T
    unwhiten = (u * eigenvalues.sqrt()) @ u.T
    return whiten.float().numpy(), unwhiten.float().numpy()


def fit(x_train: np.ndarray) -> Preprocessor:
    """Fit the paper's preprocessing on uint8 (N, H, W, C) training images."""
    x = x_train.astype(np.float32) / 255.0
    if x_train.shape[-1] == 1:
        return Preprocessor("standardize", [x.mean()], [x.std()])
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    pre = Preprocessor("standardize", mean, std)
    z = pre.to_model(x_train)
    n, c, h, w = z.shape
    block = BLOCK if h > 64 else None
    if block is None:
        rows = z.reshape(n, -1)
    else:
        if h % block or w % block:
            raise RcigError(f"block ZCA needs a size divisible by {block}, got {h}x{w}")
        rows = z.reshape(n, c, h // block, block, w // block, block).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * block * block)
    whiten, unwhiten = zca_matrices(rows)
    return Preprocessor("zca", mean, std, whiten, unwhiten, block)


def _cache_path(spec: str, x_train: np.ndarray, cache_dir: str | os.PathLike | None) -> Path:
    root = Path(cache_dir) if cache_dir else cache_root() / "preprocess"
    digest = hashlib.sha256(x_train.tobytes()).hexdigest()[:16]
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
