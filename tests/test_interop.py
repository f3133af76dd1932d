"""Other tools' formats: every export round-trips through import, flax checkpoints are read
without flax, pickles are refused, formats are told apart by content."""

import json
import pickle
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from conftest import one_line_error, run
from rcig.interop import detect_format, export
from rcig.interop.flax import decode_array
from rcig.io import load, save


@pytest.fixture(scope="module")
def soft_set():
    """A digits random-real set (2 per class) whose labels were made soft, as distillation does."""
    from rcig.evaluation.baselines import baseline_set

    ds = baseline_set("digits", 2, method="random", seed=0)
    g = torch.Generator().manual_seed(0)
    ds.labels = ds.labels + 0.05 * torch.randn(ds.labels.shape, generator=g)
    return ds


def ext_array(a: np.ndarray, code: int = 1) -> msgpack.ExtType:
    """An ndarray as flax.serialization writes it: ext type 1, msgpack (shape, dtype name, bytes)."""
    return msgpack.ExtType(code, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True))


def flax_file(path: Path, state: dict) -> Path:
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    return path


def support(x_nchw: torch.Tensor, y: torch.Tensor, log_temp: float = 0.25) -> dict:
    return {"x_proto": ext_array(x_nchw.permute(0, 2, 3, 1).contiguous().numpy()),
            "y_proto": ext_array(y.numpy()), "log_temp": ext_array(np.array(log_temp, np.float32))}


# ------------------------------------------------------------------------------- export

@pytest.mark.parametrize("fmt,dest", [("mtt", "mtt"), ("dc", "dc.pt"), ("kip", "kip.npz"), ("npz", "own.npz")])
def test_export_then_import_gives_the_same_set(fmt, dest, soft_set, tmp_path, capsys):
    src = tmp_path / "set.safetensors"
    save(soft_set, src)
    assert run(["export", src, "--format", fmt, "--out", tmp_path / dest], capsys)[0] == 0
    if fmt == "npz":  # our own file: read directly
        back = load(tmp_path / dest)
    else:
        code, out, err = run(["import", tmp_path / dest, "--dataset", "digits", "--out", tmp_path / "back.safetensors"],
                             capsys)
        assert code == 0, err
        assert f"({fmt})" in out  # auto-detected
        back = load(tmp_path / "back.safetensors")
    assert torch.equal(back.images, soft_set.images) and torch.equal(back.labels, soft_set.labels)
    assert back.meta["dataset"] == "digits" and back.meta["ipc"] == 2 and back.preprocessing_known


def test_exports_follow_each_formats_own_loading_convention(soft_set, tmp_path):
    n = len(soft_set.images)
    export(soft_set, "mtt", tmp_path / "mtt")
    images = torch.load(tmp_path / "mtt" / "images_best.pt", weights_only=True)
    labels = torch.load(tmp_path / "mtt" / "labels_best.pt", weights_only=True)
    assert images.dtype == torch.float32 and images.shape == (n, 1, 8, 8) and labels.shape == (n, 10)

    export(soft_set, "dc", tmp_path / "dc.pt")
    image_syn, label_syn = torch.load(tmp_path / "dc.pt", weights_only=True)["data"][0]  # as DC's code unpacks it
    assert torch.equal(image_syn, soft_set.images)
    assert label_syn.dtype == torch.int64 and torch.equal(label_syn, soft_set.labels.argmax(1))

    export(soft_set, "kip", tmp_path / "kip.npz")
    with np.load(tmp_path / "kip.npz", allow_pickle=False) as f:
        assert f["images"].shape == (n, 8, 8, 1)  # NHWC
        assert np.array_equal(f["images"][3, :, :, 0], soft_set.images[3, 0].numpy())
        assert np.array_equal(f["labels"], soft_set.labels.numpy())


def test_imagefolder_pngs_are_pixels_and_labels_json_holds_the_soft_labels(soft_set, tmp_path):
    from PIL import Image

    export(soft_set, "imagefolder", tmp_path / "folder")
    folders = sorted(p for p in (tmp_path / "folder").iterdir() if p.is_dir())
    assert [f.name for f in folders] == [f"{k:03d}_{k}" for k in range(10)]  # sorted = class order
    expected = soft_set.preprocessor().to_pixels(soft_set.images)  # inverse preprocessing
    doc = json.loads((tmp_path / "folder" / "labels.json").read_text())
    assert doc["class_names"] == [str(k) for k in range(10)] and len(doc["images"]) == len(expected)
    for i, entry in enumerate(doc["images"]):  # entries are in the set's order
        png = np.array(Image.open(tmp_path / "folder" / entry["file"]))
        assert np.array_equal(png, expected[i, :, :, 0])
        assert entry["class"] == int(soft_set.labels[i].argmax())
        assert np.allclose(entry["label"], soft_set.labels[i].numpy(), atol=1e-6)
    assert not np.array_equal(expected[0], expected[1])  # not a constant picture


# ------------------------------------------------------------------------------ import

def test_rcig_flax_checkpoint_reads_the_ema_support(soft_set, tmp_path, capsys):
    ema_x, params_x = soft_set.images, soft_set.images + 1.0
    state = {"step": ext_array(np.array(7, np.int64), code=3), "train_it": 7,
             "params": support(params_x, soft_set.labels), "ema_average": support(ema_x, soft_set.labels, 0.5),
             "opt_state": {"0": {"count": ext_array(np.array(7, np.int32), code=3)}}}
    ckpt = flax_file(tmp_path / "checkpoint_10000", state)
    assert detect_format(ckpt) == "rcig"
    code, out, err = run(["import", ckpt, "--dataset", "digits", "--out", tmp_path / "r.safetensors"], capsys)
    assert code == 0, err
    ds = load(tmp_path / "r.safetensors")
    assert torch.equal(ds.images, ema_x) and torch.equal(ds.labels, soft_set.labels)  # NHWC -> NCHW
    assert ds.meta["log_temp"] == 0.5 and ds.meta["source_format"] == "rcig"
    assert ds.meta["flip"] is False  # gray: the paper's preset has no flip trick
    # FRePo's layout: the support under params
    del state["ema_average"]
    ckpt = flax_file(tmp_path / "frepo_ckpt", state)
    assert detect_format(ckpt) == "frepo"
    assert run(["import", ckpt, "--dataset", "digits", "--out", tmp_path / "f.safetensors"], capsys)[0] == 0
    assert torch.equal(load(tmp_path / "f.safetensors").images, params_x)


def test_flax_rgb_images_are_transposed_from_nhwc(tmp_path, capsys):
    x = torch.randn(4, 3, 5, 5)  # an RGB support, kept as stored without --dataset
    y = torch.randn(4, 2)
    (tmp_path / "checkpoint_5").mkdir()  # a checkpoint saved as a folder
    flax_file(tmp_path / "checkpoint_5" / "checkpoint", {"ema_average": support(x, y)})
    assert run(["import", tmp_path / "checkpoint_5", "--out", tmp_path / "x.safetensors"], capsys)[0] == 0
    ds = load(tmp_path / "x.safetensors")
    assert torch.equal(ds.images, x) and torch.equal(ds.labels, y)
    assert ds.meta["flip"] is True  # RGB RCIG checkpoint: the paper's preset uses the flip trick


def test_flax_chunked_and_bfloat16_arrays_are_decoded(soft_set, tmp_path, capsys):
    flat = soft_set.images.permute(0, 2, 3, 1).contiguous().numpy().reshape(-1)
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 20, "1": 8, "2": 8, "3": 1},
               "chunks": {"0": ext_array(flat[:700]), "1": ext_array(flat[700:])}}
    state = {"ema_average": {"x_proto": chunked, "y_proto": ext_array(soft_set.labels.numpy())}}
    ckpt = flax_file(tmp_path / "ckpt", state)
    assert run(["import", ckpt, "--format", "rcig", "--dataset", "digits", "--out", tmp_path / "c.npz"], capsys)[0] == 0
    assert torch.equal(load(tmp_path / "c.npz").images, soft_set.images)
    values = np.array([1.0, -2.5, 0.15625, 3e38], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 = top half of a float32
    payload = msgpack.packb(((4,), "bfloat16", bf16.tobytes()), use_bin_type=True)
    assert np.array_equal(decode_array(payload), (bf16.astype(np.uint32) << 16).view(np.float32))


@pytest.mark.parametrize("state,message", [
    ({"params": {"x_proto": 1}, "step": 3}, "no 'ema_average' in the checkpoint.*found top-level keys: params, step"),
    ({"ema_average": {"images": 1, "log_temp": 0}}, "'ema_average' has no 'x_proto' or 'y_proto'; found: images, log_temp"),
])
def test_flax_checkpoint_missing_key_is_one_line_naming_what_was_found(state, message, tmp_path, capsys):
    ckpt = flax_file(tmp_path / "ckpt", state)
    code, _, err = run(["import", ckpt, "--format", "rcig", "--out", tmp_path / "x.safetensors"], capsys)
    one_line_error(code, err)
    assert re.search(message, err), err


class Payload:
    """Unpickling this would create a file: the marker of code run from a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("save_with", ["torch", "pickle"])
def test_pickles_that_need_code_are_refused_and_never_run(save_with, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    obj = {"data": [[torch.zeros(1, 1, 8, 8), Payload(marker)]]}
    if save_with == "torch":
        torch.save(obj, evil)
    else:
        evil.write_bytes(pickle.dumps(obj, protocol=2))
    for fmt in ("auto", "dc"):
        code, _, err = run(["import", evil, "--format", fmt, "--out", tmp_path / "x.safetensors"], capsys)
        one_line_error(code, err, "pickle")
        assert "weights_only" in err, err
    assert not marker.exists()


def test_formats_are_detected_by_content(soft_set, tmp_path):
    export(soft_set, "mtt", tmp_path / "m")
    export(soft_set, "dc", tmp_path / "dc_but_named.npz")  # the name lies; the content decides
    export(soft_set, "kip", tmp_path / "kip.bin")
    save(soft_set, tmp_path / "own.safetensors")
    legacy = tmp_path / "legacy.pt"
    torch.save({"data": [[soft_set.images, soft_set.labels.argmax(1)]]}, legacy, _use_new_zipfile_serialization=False)
    assert detect_format(tmp_path / "m") == "mtt" and detect_format(tmp_path / "m" / "images_best.pt") == "mtt"
    assert detect_format(tmp_path / "dc_but_named.npz") == "dc"
    assert detect_format(legacy) == "dc"
    assert detect_format(tmp_path / "kip.bin") == "kip"
    from rcig.errors import RcigError

    with pytest.raises(RcigError, match="already an rcig distilled set"):
        detect_format(tmp_path / "own.safetensors")
    (tmp_path / "junk").write_bytes(b"hello world, not a set")
    with pytest.raises(RcigError, match="cannot tell the format"):
        detect_format(tmp_path / "junk")


def test_import_without_dataset_keeps_images_and_marks_preprocessing_unknown(soft_set, tmp_path, capsys):
    export(soft_set, "kip", tmp_path / "kip.npz")
    code, out, _ = run(["import", tmp_path / "kip.npz", "--out", tmp_path / "u.safetensors"], capsys)
    assert code == 0 and "preprocessing unknown" in out
    ds = load(tmp_path / "u.safetensors")
    assert torch.equal(ds.images, soft_set.images) and ds.meta["preprocess"] == {"kind": "unknown"}
    assert ds.meta["dataset"] is None and not ds.preprocessing_known
    code, _, err = run(["eval", tmp_path / "u.safetensors", "--models", "1", "--steps", "5"], capsys)
    assert code == 2 and "imported without --dataset" in err and "--dataset SPEC" in err
    code, _, err = run(["export", tmp_path / "u.safetensors", "--format", "imagefolder", "--out", tmp_path / "f"], capsys)
    assert code == 2 and "preprocessing is unknown" in err
    assert run(["show", tmp_path / "u.safetensors", "--out", tmp_path / "g.png"], capsys)[0] == 0  # contrast-stretched


def test_stored_as_unit_maps_pixels_into_model_space(soft_set, tmp_path, capsys):
    pixels = soft_set.preprocessor().to_pixels(soft_set.images)  # uint8 NHWC
    np.savez(tmp_path / "pix.npz", images=pixels.astype(np.float32) / 255.0, labels=soft_set.labels.numpy())
    assert run(["import", tmp_path / "pix.npz", "--dataset", "digits", "--stored-as", "unit",
                "--out", tmp_path / "p.safetensors"], capsys)[0] == 0
    back = load(tmp_path / "p.safetensors")
    assert torch.allclose(back.images, soft_set.preprocessor().to_model(pixels), atol=1e-5)
    assert not torch.allclose(back.images, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, atol=0.1)
    code, _, err = run(["import", tmp_path / "pix.npz", "--stored-as", "norm:0.5", "--out", tmp_path / "q.npz"], capsys)
    assert code == 2 and "--stored-as must be" in err


def test_mtt_without_labels_file_takes_class_ordered_labels(soft_set, tmp_path, capsys):
    export(soft_set, "mtt", tmp_path / "m")
    (tmp_path / "m" / "labels_best.pt").unlink()
    code, _, err = run(["import", tmp_path / "m", "--out", tmp_path / "x.safetensors"], capsys)
    assert code == 2 and "give --dataset" in err
    assert run(["import", tmp_path / "m", "--dataset", "digits", "--out", tmp_path / "x.safetensors"], capsys)[0] == 0
    labels = load(tmp_path / "x.safetensors").labels
    assert labels.argmax(1).tolist() == [k for k in range(10) for _ in range(2)]
    assert torch.allclose(labels.sum(1), torch.zeros(20), atol=1e-6)  # centred one-hot


def test_imagefolder_of_an_rgb_zca_set_gives_back_the_real_pixels(tmp_path, capsys):
    """A random-real RGB set lives in ZCA space; its PNGs must be exactly the training images."""
    from PIL import Image

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "rgb.npz", x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    spec = f"npz:{tmp_path / 'rgb.npz'}"
    assert run(["baseline", "--dataset", spec, "--ipc", "2", "--out", tmp_path / "b.safetensors"], capsys)[0] == 0
    ds = load(tmp_path / "b.safetensors")
    assert ds.meta["preprocess"]["kind"] == "zca"
    assert run(["export", tmp_path / "b.safetensors", "--format", "imagefolder", "--out", tmp_path / "f"], capsys)[0] == 0
    doc = json.loads((tmp_path / "f" / "labels.json").read_text())
    train = {img.tobytes() for img in x}
    for entry in doc["images"]:
        png = np.array(Image.open(tmp_path / "f" / entry["file"]))
        assert png.shape == (8, 8, 3) and png.tobytes() in train
