"""Every loader on small files in its real format, written here; preprocessing; bad input."""

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from rcig.data import describe_specs, load, prepare
from rcig.data.formats import read_idx
from rcig.data.preprocess import Preprocessor, channel_moments, fit, fit_preprocessor, row_moments
from rcig.errors import RcigError


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RCIG_CACHE_DIR", str(tmp_path / "cache"))


def write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def make_idx_folder(folder, gz=True, n=(40, 20)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    out = {}
    for split, count, stem in (("train", n[0], "train"), ("test", n[1], "t10k")):
        x = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        y = np.arange(count) % 10
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_gz_and_raw(tmp_path, gz):
    written = make_idx_folder(tmp_path / "fm", gz=gz)
    ds = load("mnist", tmp_path / "fm", download=False)
    assert ds.x_train.shape == (40, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train[..., 0], written["train"][0])
    np.testing.assert_array_equal(ds.y_test, written["test"][1])
    assert ds.num_classes == 10


def test_idx_corrupt_and_missing_files_give_one_line_errors(tmp_path):
    make_idx_folder(tmp_path / "fm", gz=False)
    path = tmp_path / "fm" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RcigError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 20)
    with pytest.raises(RcigError, match="magic"):
        read_idx(path)
    with pytest.raises(RcigError) as info:
        load("mnist", tmp_path / "nowhere", download=False)
    assert "\n" not in str(info.value)


def test_download_checks_checksums(tmp_path, monkeypatch):
    from rcig.data import sources

    payload = tmp_path / "file.bin"
    payload.write_bytes(b"hello rcig")
    import hashlib

    good = hashlib.md5(b"hello rcig").hexdigest()
    sources.download(payload.as_uri(), tmp_path / "ok.bin", good)
    assert (tmp_path / "ok.bin").read_bytes() == b"hello rcig"
    with pytest.raises(RcigError, match="checksum mismatch"):
        sources.download(payload.as_uri(), tmp_path / "bad.bin", "0" * 32)
    assert not (tmp_path / "bad.bin").exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


def cifar_batch(n, rng, label_key="labels"):
    return {b"batch_label": b"x", label_key.encode(): [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def test_cifar10_python_release(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [cifar_batch(6, rng) for _ in range(5)]
    for i, b in enumerate(batches, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(b, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(4, rng), protocol=2))
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [n.encode() for n in names]}, protocol=2))
    ds = load("cifar10", tmp_path, download=False)
    assert ds.x_train.shape == (30, 32, 32, 3) and ds.class_names == tuple(names)
    first = batches[0][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(ds.x_train[0], first)


def test_cifar_binary_releases_and_tarball(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = {}
    for name, n in [(f"data_batch_{i}.bin", 3) for i in range(1, 6)] + [("test_batch.bin", 2)]:
        rows = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
        (folder / name).write_bytes(rows.tobytes())
        records[name] = rows
    ds = load("cifar10", tmp_path, download=False)
    assert ds.x_train.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(ds.y_test, records["test_batch.bin"][:, 0])
    # CIFAR-100 binary: coarse + fine label bytes, inside a .tar.gz
    c100 = tmp_path / "c100"
    c100.mkdir()
    inner = tmp_path / "cifar-100-binary"
    inner.mkdir()
    for name, n in (("train.bin", 5), ("test.bin", 3)):
        rows = np.concatenate([rng.integers(0, 20, (n, 1)), rng.integers(0, 100, (n, 1)),
                               rng.integers(0, 256, (n, 3072))], axis=1).astype(np.uint8)
        (inner / name).write_bytes(rows.tobytes())
    (inner / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    with tarfile.open(c100 / "cifar-100-binary.tar.gz", "w:gz") as tar:
        tar.add(inner, arcname="cifar-100-binary")
    ds = load("cifar100", c100, download=False)
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.num_classes == 100


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = {b"data": Exploit(), b"labels": [0]}
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(evil, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(RcigError, match="refusing to load a pickle that wants to import"):
        load("cifar10", tmp_path, download=False)
    assert not (tmp_path / "pwned_by_pickle").exists()


def save_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_imagefolder_split_and_resize(tmp_path):
    rng = np.random.default_rng(3)
    for c in ("cat", "dog"):
        for i in range(5):
            save_png(tmp_path / "imgs" / c / f"{i}.png", rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    ds = load(f"imagefolder:{tmp_path / 'imgs'}?size=8")
    assert ds.class_names == ("cat", "dog")
    assert ds.x_train.shape == (8, 8, 8, 3) and ds.x_test.shape == (2, 8, 8, 3)
    assert sorted(np.bincount(ds.y_test)) == [1, 1]  # stratified
    with pytest.raises(RcigError, match="no such folder"):
        load(f"imagefolder:{tmp_path / 'missing'}")


def test_tiny_imagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    (root / "words.txt").write_text("n01\tgoldfish, carassius\nn02\tsalamander")
    rng = np.random.default_rng(4)
    for w in wnids:
        for i in range(3):
            save_png(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    lines = []
    for i, w in enumerate(wnids * 2):
        save_png(root / "val" / "images" / f"val_{i}.JPEG", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    ds = load("tiny_imagenet", tmp_path, download=False)
    assert ds.x_train.shape == (6, 64, 64, 3) and ds.x_test.shape == (4, 64, 64, 3)
    assert ds.class_names == ("goldfish", "salamander")


def write_npz(path, **overrides):
    rng = np.random.default_rng(5)
    arrays = {"x_train": rng.integers(0, 256, (20, 10, 10), dtype=np.uint8), "y_train": np.arange(20) % 4,
              "x_test": rng.integers(0, 256, (8, 10, 10), dtype=np.uint8), "y_test": np.arange(8) % 4}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_npz_loader_and_its_errors(tmp_path):
    ds = load(f"npz:{write_npz(tmp_path / 'ok.npz')}")
    assert ds.x_train.shape == (20, 10, 10, 1) and ds.num_classes == 4
    cases = [
        ({"y_test": None}, "lacks the key"),
        ({"x_train": np.zeros((20, 10, 10), np.float32)}, "must be uint8"),
        ({"x_train": np.zeros((20, 10), np.uint8)}, "N x H x W"),
        ({"y_train": np.arange(19)}, "integer labels"),
        ({"y_train": np.arange(20) - 1}, "labels must lie"),
        ({"x_test": np.zeros((8, 12, 12), np.uint8)}, "differ in shape"),
    ]
    for i, (override, message) in enumerate(cases):
        with pytest.raises(RcigError, match=message):
            load(f"npz:{write_npz(tmp_path / f'bad{i}.npz', **override)}")
    with pytest.raises(RcigError, match="no such file"):
        load(f"npz:{tmp_path / 'nope.npz'}")


def test_unknown_spec_names_the_known_ones():
    with pytest.raises(RcigError, match="unknown dataset 'cifar11'.*cifar10"):
        load("cifar11")


def test_digits_split_is_stratified_and_deterministic():
    a, b = load("digits"), load("digits")
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.x_train.shape[1:] == (8, 8, 1) and a.x_train.dtype == np.uint8
    counts_train, counts_test = np.bincount(a.y_train), np.bincount(a.y_test)
    assert np.allclose(counts_test / counts_train, 0.25, atol=0.02)


def test_zca_round_trip_and_whitening(tmp_path):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(600, 1, 1, 3)) * 40 + 128
    x = np.clip(base + rng.normal(size=(600, 8, 8, 3)) * 30, 0, 255).astype(np.uint8)
    pre = fit(x)
    z = pre.to_model(x)
    assert z.shape == (600, 3, 8, 8)
    np.testing.assert_array_equal(pre.to_pixels(z), x)  # exact inverse, to the unit
    cov = torch.cov(z.reshape(600, -1).double().T)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    raw_cov = torch.cov(torch.from_numpy(x.reshape(600, -1)).double().T / 255)
    raw_corr = raw_cov / torch.sqrt(torch.outer(torch.diag(raw_cov), torch.diag(raw_cov)))
    corr = cov / torch.sqrt(torch.outer(torch.diag(cov), torch.diag(cov)))
    assert (corr - torch.eye(len(corr))).abs().mean() < 0.25 * (raw_corr - torch.eye(len(raw_corr))).abs().mean()
    assert off_diagonal.abs().max() < 1.0
    # state round trip
    meta, arrays = pre.state()
    again = Preprocessor.from_state(meta, arrays)
    torch.testing.assert_close(again.to_model(x), z)


def test_channel_moments_are_numpys_whole_array_statistics_bit_for_bit():
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (301, 5, 7, 3), dtype=np.uint8)
    whole = x.astype(np.float32) / 255.0
    for batch in (1, 13, 300, 301, 1000):
        mean, std = channel_moments(x, batch)
        assert mean.dtype == std.dtype == np.float32
        np.testing.assert_array_equal(mean, whole.mean(axis=(0, 1, 2)))
        np.testing.assert_array_equal(std, whole.std(axis=(0, 1, 2)))


def test_row_moments_in_chunks_equal_the_whole_array_ones_in_float64():
    """Two passes over chunks (the mean, then the centred products) against the textbook
    formulas on the whole (N, d) array in float64: equal to float64 rounding."""
    rng = np.random.default_rng(9)
    rows = torch.from_numpy(rng.normal(size=(257, 6)) * [1, 2, 3, 50, 1e-3, 7] + 100).float()
    whole = rows.double()
    centred = whole - whole.mean(0)
    for size in (1, 10, 256, 257, 400):
        moments = row_moments(lambda: rows.split(size))
        assert moments.count == 257
        torch.testing.assert_close(moments.mean, whole.mean(0), rtol=1e-14, atol=0)
        torch.testing.assert_close(moments.cov, centred.T @ centred / 257, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(moments.cov, torch.cov(whole.T, correction=0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("size, channels", [(8, 3), (96, 3), (8, 1)])
def test_to_model_in_chunks_gives_the_one_pass_values(size, channels):
    """The chunks written into one output: the values of standardising and whitening each chunk
    and joining them (bit for bit), at any chunk size; the block ZCA (96 px) too."""
    rng = np.random.default_rng(10)
    x = rng.integers(0, 256, (70, size, size, channels), dtype=np.uint8)
    pre = fit(x)
    assert pre.kind == ("zca" if channels == 3 else "standardize") and pre.block == (32 if size > 64 else None)
    mean = torch.from_numpy(pre.mean).view(1, -1, 1, 1)
    std = torch.from_numpy(pre.std).view(1, -1, 1, 1)
    for batch in (1, 16, 70, 8192):
        joined = []
        for i in range(0, 70, batch):
            chunk = (torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
            joined.append(chunk if pre.whiten is None else pre._apply(chunk, pre.whiten))
        out = pre.to_model(x, batch)
        assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, torch.cat(joined))


PEAK_SCRIPT = """
import resource, sys
import numpy as np
from rcig.data.preprocess import fit
x = np.random.default_rng(0).integers(0, 256, (80000, 16, 16, 3), dtype=np.uint8)
pre = fit(x[:300], 256)  # libraries loaded before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = fit(x, 1024) if sys.argv[1] == "fit" else pre.to_model(x, 1024)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("part, bound", [("fit", 0.5), ("to_model", 1.5)])
def test_preprocessing_peak_is_bounded_by_the_float32_images(part, bound):
    """Peak RSS growth of the fit (one chunk and the d x d matrices, not a copy of the images)
    and of to_model (its float32 output and one chunk), in a fresh process: 80,000 images of
    d = 768, 246 MB as float32. Holding the images in float32 (or float64) whole breaks it."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, part], capture_output=True, text=True, check=True,
                          env=env, timeout=120)
    float32_images = 80000 * 768 * 4
    assert int(done.stdout.split()[-1]) < bound * float32_images


def test_preprocessor_cache_hit(tmp_path):
    ds = load(f"npz:{write_npz(tmp_path / 'ok.npz')}")
    first = fit_preprocessor(ds, tmp_path / "pc")
    assert len(list((tmp_path / "pc").iterdir())) == 1
    second = fit_preprocessor(ds, tmp_path / "pc")
    assert first.state()[0] == second.state()[0]


def test_describe_specs_finds_digits():
    rows = {r["spec"]: r for r in describe_specs()}
    assert rows["digits"]["found"] is True
    assert "fashion_mnist" in rows and "npz:PATH" in rows


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    p = prepare("fashion_mnist")
    assert tuple(p.x_train.shape) == (60000, 1, 28, 28) and tuple(p.test_images().shape) == (10000, 1, 28, 28)
    assert abs(float(p.x_train.mean())) < 1e-3 and abs(float(p.x_train.std()) - 1) < 1e-3
    assert p.dataset.class_names[9] == "Ankle boot"


def test_a_prepared_dataset_lets_the_loaded_images_go_and_holds_the_test_images_as_uint8(tmp_path):
    """What a run holds of its data: the training images in model space only (the loaded uint8
    ones are let go, even where the test images are a view of the same buffer), the test images
    as uint8, put in model space when asked, exactly as the training images are."""
    import gc
    import weakref

    from rcig.data import Dataset

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)  # one buffer: train, then test
    labels = np.arange(50) % 5
    loaded = Dataset("npz:one_buffer", pixels[:40], labels[:40], pixels[40:], labels[40:], tuple("abcde"))
    buffer = weakref.ref(pixels)
    prepared = prepare(loaded, cache_dir=tmp_path)
    assert prepared.dataset == loaded.info and prepared.dataset.num_classes == 5
    expected_test = prepared.preprocessor.to_model(loaded.x_test)
    del pixels, loaded
    gc.collect()
    assert buffer() is None  # no uint8 copy, nor a view into one, is kept
    assert prepared.test_pixels.dtype == np.uint8 and prepared.test_pixels.shape == (10, 8, 8, 3)
    held = [v for v in vars(prepared).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert [tuple(v.shape) for v in held] == [(40, 3, 8, 8)]  # the training images alone in float32
    made = prepared.test_images()
    assert made.dtype == torch.float32 and torch.equal(made, expected_test)
    assert made is not prepared.test_images()  # made at each call, held by the caller


def test_gray_model_space_images_keep_the_channels_last_strides_of_their_chunks():
    from rcig.data.preprocess import fit

    x = np.random.default_rng(0).integers(0, 256, size=(7, 5, 5, 1), dtype=np.uint8)
    pre = fit(x)
    out = pre.to_model(x, batch=3)
    assert out.stride() == (25, 1, 5, 1)  # what torch's convolutions take as channels-last
    assert torch.equal(out, torch.cat(list(pre.standardized(x, 3))))
