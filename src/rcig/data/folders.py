"""Datasets stored as image files (Tiny-ImageNet, any ImageFolder) or on the Hugging Face hub."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from rcig.errors import RcigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def read_images(paths: list[Path], mode: str, size: int | None) -> np.ndarray:
    """Decode image files with PIL to uint8 (N, H, W, C); ``mode`` "L" or "RGB"."""
    from PIL import Image
    from rcig.progress import Progress

    out = []
    bar = Progress(len(paths), "decode images", "img", enabled=len(paths) >= 2000, transient=True)
    for p in paths:
        bar.update(1)
        with _opened(p) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(np.asarray(im, dtype=np.uint8))
    bar.close()
    if not out:
        return np.zeros((0, size or 1, size or 1, 1 if mode == "L" else 3), np.uint8)
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise RcigError(f"images differ in size ({sorted(shapes)[:3]} ...); add ?size=N to resize them")
    arr = np.stack(out)
    return arr[..., None] if arr.ndim == 3 else arr


@contextlib.contextmanager
def _opened(path: Path):
    """A decoded PIL image; any decoding failure is an RcigError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            yield im
    except RcigError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, ValueError, SyntaxError, DecompressionBombError ...
        raise RcigError(f"cannot read image {path}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _mode_of(paths: list[Path]) -> str:
    """"L" when every sampled image is grayscale, else "RGB"."""
    for p in paths[:: max(1, len(paths) // 50)]:
        with _opened(p) as im:
            if im.mode not in ("L", "1", "I;16", "I"):
                return "RGB"
    return "L"


def load_imagefolder(root: Path, size: int | None) -> dict:
    """One subfolder per class. ``root/train`` and ``root/test`` if both exist, else a seeded
    stratified 80/20 split of ``root``."""
    if not root.is_dir():
        raise RcigError(f"no such folder: {root}")
    split_roots = {"train": root / "train", "test": root / "test"}
    if all(p.is_dir() for p in split_roots.values()):
        classes = sorted(d.name for d in split_roots["train"].iterdir() if d.is_dir())
        extra = sorted({d.name for d in split_roots["test"].iterdir() if d.is_dir()} - set(classes))
        if extra:
            raise RcigError(f"{root}/test holds class folder(s) {', '.join(extra[:5])} that {root}/train lacks")
        listing = {s: [(f, i) for i, c in enumerate(classes) for f in _image_files(r / c)] for s, r in split_roots.items()}
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        listing = None
    if not classes:
        raise RcigError(f"{root} has no class subfolders")
    if listing is None:
        from sklearn.model_selection import train_test_split

        items = [(f, i) for i, c in enumerate(classes) for f in _image_files(root / c)]
        if not items:
            raise RcigError(f"{root} holds no images")
        labels = np.array([i for _, i in items])
        counts = np.bincount(labels, minlength=len(classes))
        few = [c for c, n in zip(classes, counts) if n < 2]
        if few:
            raise RcigError(f"{root}: class folder(s) {', '.join(few[:5])} hold fewer than 2 images; the 80/20 "
                            f"split needs at least 2 per class (or give {root}/train and {root}/test)")
        n_test = max(int(np.ceil(0.2 * len(items))), len(classes))  # >= 1 per class; leaves >= 1 per class to train
        train, test = train_test_split(items, test_size=n_test, stratify=labels, random_state=0)
        listing = {"train": train, "test": test}
    all_files = [f for s in listing.values() for f, _ in s]
    empty = [c for i, c in enumerate(classes) if not any(j == i for _, j in listing["train"])]
    if empty:
        raise RcigError(f"{root}: class folder(s) {', '.join(empty[:5])} hold no training images")
    mode = _mode_of(all_files)
    arrays = {}
    for split, items in listing.items():
        arrays[f"x_{split}"] = read_images([f for f, _ in items], mode, size)
        arrays[f"y_{split}"] = np.array([i for _, i in items], dtype=np.int64)
    arrays["class_names"] = classes
    return arrays


def load_tiny_imagenet(root: Path) -> dict:
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG; val/images + val/val_annotations.txt."""
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip()
    train = [(p, index[w]) for w in wnids for p in _image_files(root / "train" / w)]
    val = []
    annotations = root / "val" / "val_annotations.txt"
    if annotations.is_file():
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                val.append((root / "val" / "images" / parts[0], index[parts[1]]))
    if not train or not val:
        raise RcigError(f"{root}: expected train/<wnid>/images/*.JPEG and val/val_annotations.txt")
    return {"x_train": read_images([p for p, _ in train], "RGB", 64), "y_train": np.array([i for _, i in train]),
            "x_test": read_images([p for p, _ in val], "RGB", 64), "y_test": np.array([i for _, i in val]),
            "class_names": [words.get(w, w) for w in wnids]}


def load_hf(name: str) -> dict:
    """A Hugging Face dataset: the first Image column and the first ClassLabel column."""
    try:
        import datasets
    except ImportError:
        raise RcigError("hf: datasets need the optional extra: pip install 'rcig[hf]'") from None
    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - network, missing dataset, ...
        raise RcigError(f"hf:{name}: cannot load ({str(exc).splitlines()[0]})") from None
    splits = list(dd.keys())
    test_split = next((s for s in ("test", "validation", "valid") if s in dd), None)
    if "train" not in dd or test_split is None:
        raise RcigError(f"hf:{name}: needs a train and a test split, has {splits}")
    features = dd["train"].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise RcigError(f"hf:{name}: needs an Image column and a ClassLabel column, has {list(features)}")
    arrays = {}
    for split, key in (("train", "train"), ("test", test_split)):
        images = [np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im, dtype=np.uint8)
                  for im in dd[key][image_col]]
        x = np.stack(images)
        arrays[f"x_{split}"] = x[..., None] if x.ndim == 3 else x
        arrays[f"y_{split}"] = np.asarray(dd[key][label_col], dtype=np.int64)
    arrays["class_names"] = list(features[label_col].names)
    return arrays
