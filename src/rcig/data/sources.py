"""Where each dataset's files are looked for, how they are downloaded, and how read.

Search order for a named set: ``--data-dir`` (the folder itself, or ``<data-dir>/<name>``),
then ``/usr/share/datasets/<name>`` (Debian's packages), then ``~/.cache/rcig/datasets/<name>``
(``$RCIG_CACHE_DIR/datasets``), where downloads go. Downloads are verified by MD5.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rcig.atomic import atomic_write
from rcig.data import formats
from rcig.errors import RcigError


def cache_root() -> Path:
    """Where downloads and fitted preprocessing go: ``$RCIG_CACHE_DIR``, else ~/.cache/rcig."""
    return Path(os.environ.get("RCIG_CACHE_DIR", Path.home() / ".cache" / "rcig"))


def candidate_dirs(data_dir: Path | None, names: tuple[str, ...]) -> list[Path]:
    dirs = []
    if data_dir is not None:
        dirs += [data_dir] + [data_dir / n for n in names]
    dirs += [Path("/usr/share/datasets") / n for n in names]
    dirs += [cache_root() / "datasets" / names[0]]
    return dirs


# ------------------------------------------------------------------------- downloading

class DownloadFailed(RcigError):
    """The network (not the disk) failed during a download."""


@contextlib.contextmanager
def _network(url: str):
    """Turn a network failure into :class:`DownloadFailed` (an OSError would read as a failed write)."""
    try:
        yield
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadFailed(f"{url}: {reason}") from None


def download(url: str, dest: Path, md5: str, timeout: float = 20.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically, showing progress; check its MD5."""
    from rcig.progress import Progress

    def fetch(out) -> None:
        digest = hashlib.md5()
        with _network(url):
            response = urllib.request.urlopen(url, timeout=timeout)
        with response, Progress(int(response.headers.get("Content-Length") or 0) or None, f"download {dest.name}",
                                "B", transient=True) as bar:
            while True:
                with _network(url):
                    chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != md5:
            raise RcigError(f"checksum mismatch for {url}: got md5 {digest.hexdigest()}, expected {md5}")

    return atomic_write(dest, fetch)


def try_download(name: str, files: dict[str, str], base: str, hint: str) -> Path:
    """Download every file of ``files`` (name -> md5) from ``base`` into the cache; a failure
    says what to fetch by hand and where to put it."""
    folder = cache_root() / "datasets" / name
    missing = [file for file in files if not (folder / file).is_file()]
    for file in missing:
        try:
            download(base + file, folder / file, md5=files[file])
        except DownloadFailed as exc:
            raise RcigError(f"{name}: its files are not on this machine and downloading them failed (no network?): "
                            f"{exc}. Fetch {', '.join(missing)} from {base} yourself and put them in {folder}; "
                            f"or {hint}") from None
    return folder


def download_note(name: str) -> str | None:
    """Where ``rcig`` would download the named dataset from, and to, if its files are missing."""
    url = NAMED[name].download_from if name in NAMED else None
    return f"rcig downloads it on first use from {url} into {cache_root() / 'datasets' / name}" if url else None


# ----------------------------------------------------------------------- named sources

@dataclass(frozen=True)
class Source:
    description: str
    hint: str
    locate: Callable[[Path | None], Path | None]
    read: Callable[[Path], dict]
    fetch: Callable[[], Path] | None = None
    download_from: str | None = None  # what ``fetch`` downloads (a URL or a base URL)

    def load(self, data_dir: Path | None, download: bool) -> dict:
        where = self.locate(data_dir)
        if where is None:
            if not download or self.fetch is None:
                raise RcigError(f"dataset files not found; {self.hint}")
            where = self.fetch()
        return self.read(where)


def digits_arrays(_: Path | None = None) -> dict:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16), stratified 80/20 split, seed 0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(images, labels, test_size=0.2, stratify=labels,
                                                        random_state=0)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "class_names": [str(i) for i in range(10)]}


def idx_source(name: str, title: str, debian: str, classes: list[str], base: str, md5s: dict[str, str]) -> Source:
    names = (name, debian)
    hint = (f"put the four idx files (train-images-idx3-ubyte.gz, ...) in --data-dir"
            + (f", or `apt-get install dataset-{debian}`" if name == "fashion_mnist" else ""))

    def locate(data_dir):
        return next((d for d in candidate_dirs(data_dir, names) if formats.find_idx_files(d)), None)

    def read(folder):
        return {**formats.load_idx_folder(folder), "class_names": classes}

    return Source(f"{title} 28x28 gray, 10 classes (idx files)", hint, locate, read,
                  lambda: try_download(name, md5s, base, hint), base)


def cifar_source(classes: int) -> Source:
    name = f"cifar{classes}"
    folders = {10: ("cifar-10-batches-bin", "cifar-10-batches-py"), 100: ("cifar-100-binary", "cifar-100-python")}[classes]
    archives = {10: ("cifar-10-binary.tar.gz", "cifar-10-python.tar.gz"),
                100: ("cifar-100-binary.tar.gz", "cifar-100-python.tar.gz")}[classes]
    md5 = {10: "c32a1d4ab5d03f1284b67883e8d87530", 100: "03b5dce01913d631647c71ecec9e9cb8"}[classes]
    hint = f"put {folders[0]}/ or {folders[1]}/ (or their .tar.gz) in --data-dir"

    def locate(data_dir):
        for root in candidate_dirs(data_dir, (name,)):
            for candidate in [root / f for f in folders + archives] + [root]:
                if candidate.exists() and _cifar_present(candidate, classes):
                    return candidate
        return None

    def read(where):
        arrays = formats.load_cifar(formats.FileSource(where), classes)
        if arrays is None:
            raise RcigError(f"{where} holds no CIFAR-{classes} batches")
        return arrays

    def fetch():
        folder = try_download(name, {archives[0]: md5}, "https://www.cs.toronto.edu/~kriz/", hint)
        return folder / archives[0]

    return Source(f"CIFAR-{classes} 32x32 RGB, {classes} classes (binary or python release)", hint, locate, read, fetch,
                  f"https://www.cs.toronto.edu/~kriz/{archives[0]}")


def _cifar_present(path: Path, classes: int) -> bool:
    if path.is_file():
        return path.name.endswith((".tar.gz", ".tgz", ".tar"))
    markers = ("data_batch_1.bin", "data_batch_1") if classes == 10 else ("train.bin", "train")
    return any((path / m).is_file() for m in markers)


def tiny_imagenet_source() -> Source:
    hint = "put the tiny-imagenet-200/ folder in --data-dir"

    def locate(data_dir):
        for root in candidate_dirs(data_dir, ("tiny_imagenet", "tiny-imagenet")):
            for candidate in (root / "tiny-imagenet-200", root):
                if (candidate / "wnids.txt").is_file() and (candidate / "train").is_dir():
                    return candidate
        return None

    def fetch():
        folder = try_download("tiny_imagenet", {"tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de"},
                              "http://cs231n.stanford.edu/", hint)
        safe_unzip(folder / "tiny-imagenet-200.zip", folder)
        return folder / "tiny-imagenet-200"

    from rcig.data.folders import load_tiny_imagenet

    return Source("Tiny-ImageNet 64x64 RGB, 200 classes (val/ as test)", hint, locate, load_tiny_imagenet, fetch,
                  "http://cs231n.stanford.edu/tiny-imagenet-200.zip")


def safe_unzip(archive: Path, dest: Path) -> None:
    """Extract a zip, refusing members that would land outside ``dest``."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            target = (dest / member.filename).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise RcigError(f"{archive}: member {member.filename} escapes the target folder")
        zf.extractall(dest)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
               "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
               "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
               "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}

NAMED: dict[str, Source] = {
    "digits": Source("scikit-learn 8x8 digits, 10 classes (embedded, no download)", "", lambda _: Path("sklearn"),
                     digits_arrays),
    "fashion_mnist": idx_source("fashion_mnist", "Fashion-MNIST", "fashion-mnist", FASHION_CLASSES,
                                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", FASHION_MD5),
    "mnist": idx_source("mnist", "MNIST", "mnist", [str(i) for i in range(10)],
                        "https://ossci-datasets.s3.amazonaws.com/mnist/", MNIST_MD5),
    "cifar10": cifar_source(10),
    "cifar100": cifar_source(100),
    "tiny_imagenet": tiny_imagenet_source(),
}


# ------------------------------------------------------------------------ path specs

MAX_IMAGE_SIZE = 1024  # the paper's largest images are 128 px; beyond this memory runs out


def _imagefolder(arg: str) -> dict:
    from rcig.data.folders import load_imagefolder

    path, _, query = arg.partition("?")
    size = None
    if query:
        key, _, value = query.partition("=")
        if key != "size" or not value.isdigit() or not 1 <= int(value) <= MAX_IMAGE_SIZE:
            raise RcigError(f"bad imagefolder option '{query}': expected size=N with N in 1..{MAX_IMAGE_SIZE}")
        size = int(value)
    return load_imagefolder(Path(path).expanduser(), size)


def _npz(arg: str) -> dict:
    return formats.load_npz(Path(arg).expanduser())


def _hf(arg: str) -> dict:
    from rcig.data.folders import load_hf

    return load_hf(arg)


PATH_SPECS: dict[str, Callable[[str], dict]] = {"imagefolder": _imagefolder, "npz": _npz, "hf": _hf}
PATH_DESCRIPTIONS = {
    "imagefolder": "one subfolder per class of images (PIL); ?size=N resizes",
    "npz": "an .npz with x_train, y_train, x_test, y_test (uint8 images)",
    "hf": "a Hugging Face dataset with an image and a class-label column (pip install rcig[hf])",
}
