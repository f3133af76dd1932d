"""Write a :class:`rcig.io.DistilledSet` in the layouts other tools load.

==========  ============================================================================
format      written (images in rcig's model space unless said otherwise)
==========  ============================================================================
mtt         ``OUT/images_best.pt`` (N, C, H, W) float32 and ``OUT/labels_best.pt`` (N, K)
            float32 soft labels, as MTT / DATM load them with ``torch.load``
dc          ``OUT`` = one ``.pt``: ``{'data': [[images, hard labels (N,) int64]],
            'soft_labels': (N, K)}``; DC / DSA / DM / DC-Bench read ``['data'][0]``
kip         ``OUT`` = ``.npz``: ``images`` (N, H, W, C) float32, ``labels`` (N, K) float32
imagefolder ``OUT/<kkk>_<class>/<nnnn>.png`` mapped back to pixels (inverse ZCA and
            standardisation, rounded and clipped to 0..255) + ``OUT/labels.json`` with the
            soft labels; class folders sort in class order (torchvision ImageFolder)
npz         ``OUT`` = rcig's own file as ``.npz`` (``rcig.io.save``)
==========  ============================================================================

Every ``.pt`` holds plain tensors, lists and dicts only: ``torch.load(f, weights_only=True)``
reads it. Every file is written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from rcig.errors import RcigError
from rcig.atomic import atomic_write, atomic_write_text


def _save_pt(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def export_mtt(ds, out: Path) -> list[Path]:
    files = [out / "images_best.pt", out / "labels_best.pt"]
    _save_pt(ds.images.contiguous().clone(), files[0])
    _save_pt(ds.labels.contiguous().clone(), files[1])
    return files


def export_dc(ds, out: Path) -> list[Path]:
    hard = ds.labels.argmax(1).to(torch.int64)
    _save_pt({"data": [[ds.images.contiguous().clone(), hard]], "soft_labels": ds.labels.contiguous().clone()}, out)
    return [out]


def export_kip(ds, out: Path) -> list[Path]:
    images = ds.images.permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)

    atomic_write(out, lambda fh: np.savez(fh, images=images, labels=ds.labels.numpy().astype(np.float32)))
    return [out]


def folder_name(index: int, name: str) -> str:
    """``003_cat``: the index keeps alphabetical order = class order; the name is made file-safe."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"
    return f"{index:03d}_{safe}"


def export_imagefolder(ds, out: Path) -> list[Path]:
    from PIL import Image

    pixels = ds.preprocessor().to_pixels(ds.images)  # (N, H, W, C) uint8
    classes = ds.labels.argmax(1).tolist()
    names = ds.meta.get("class_names") or [str(i) for i in range(ds.labels.shape[1])]
    written, entries, count = [], [], [0] * len(names)
    for img, k, label in zip(pixels, classes, ds.labels.tolist()):
        rel = f"{folder_name(k, names[k])}/{count[k]:04d}.png"
        count[k] += 1
        array = img[:, :, 0] if img.shape[2] == 1 else img
        atomic_write(out / rel, lambda fh, a=array: Image.fromarray(a).save(fh, format="PNG"))
        written.append(out / rel)
        entries.append({"file": rel, "class": k, "label": label})
    doc = {"dataset": ds.meta.get("dataset"), "class_names": list(names), "images": entries,
           "note": "label = the set's soft label (rcig: centred one-hot plus what distillation learned); "
                   "pixels = the images mapped back through the inverse preprocessing, clipped to 0..255"}
    atomic_write_text(out / "labels.json", json.dumps(doc, indent=1) + "\n")
    return written + [out / "labels.json"]


def export_npz(ds, out: Path) -> list[Path]:
    from rcig.io import save

    if out.suffix != ".npz":
        raise RcigError(f"--format npz writes a .npz file; got --out {out}")
    save(ds, out)
    return [out]


EXPORTERS = {"mtt": export_mtt, "dc": export_dc, "kip": export_kip, "imagefolder": export_imagefolder,
             "npz": export_npz}


def export(ds, fmt: str, out: str | Path) -> list[Path]:
    """Write ``ds`` as ``fmt`` to ``out`` (a folder for mtt and imagefolder); returns the files."""
    if fmt not in EXPORTERS:
        raise RcigError(f"unknown export format '{fmt}'; choose {', '.join(EXPORTERS)}")
    out = Path(out)
    if fmt in ("mtt", "imagefolder") and out.exists() and not out.is_dir():
        raise RcigError(f"--format {fmt} writes a folder; {out} is a file")
    if fmt not in ("mtt", "imagefolder") and out.is_dir():
        raise RcigError(f"--format {fmt} writes one file; {out} is a folder")
    return EXPORTERS[fmt](ds, out)
