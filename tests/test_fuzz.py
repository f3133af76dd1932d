"""Property-based fuzzing of every subcommand with hostile inputs (hypothesis).

Generated: distilled-set files (tensor, metadata and byte damage), npz datasets, image
folders, config overrides and damaged run folders. For every call the contract is: exit 0
with a meaningful result, or exit 2 with exactly one line on stderr starting ``rcig: error:``;
never a traceback nor the bug line (exit 70); and no file changes other than the outputs the
call was asked to write. The number of examples comes from the hypothesis profile
(tests/conftest.py: "ci" by default, HYPOTHESIS_PROFILE=long for more).
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY, set_args
from rcig.cli import main
from rcig.config import Config
from rcig.io import load
from rcig.run.checkpoint import sealed
from rcig.run.folder import LOCK_FILE

# smaller still: every example that passes the checks runs a distillation
CONFIG = {**TINY, "pool_size": 2, "target_batch_size": 64, "max_online_steps": 4, "n_inner_steps": 3, "n_hinv_steps": 3}
QUICK_EVAL = ["--models", "1", "--steps", "5", "--test-limit", "50", "--settings", "no_aug", "--quiet"]


def tree_hashes(root: Path, skip: set[Path]) -> dict[str, str]:
    """sha256 of every file under ``root`` except those under a ``skip`` path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(path == s or s in path.parents for s in skip):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cli(argv, root: Path, outputs=()) -> tuple[int, str, str]:
    """Run the command line in-process; check the one-line/no-traceback/untouched-files contract."""
    skip = {Path(o) for o in outputs}
    before = tree_hashes(root, skip)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            code = exc.code
    err_text = err.getvalue()
    event(f"{argv[0]}: exit {code}")  # --hypothesis-show-statistics shows how often each outcome came up
    assert "Traceback" not in err_text and code in (0, 2), (argv, code, err_text)
    if code == 2:
        lines = [line for line in err_text.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("rcig: error:"), (argv, err_text)
    assert tree_hashes(root, skip) == before, f"{argv} changed files it was not asked to write"
    return code, out.getvalue(), err_text


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    assert main(["baseline", "--dataset", "digits", "--ipc", "1", "--out", str(path)]) == 0
    return path


# ---------------------------------------------------------------- distilled-set files

json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 2 ** 40) | st.floats(allow_nan=True)
                           | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)
tensors = st.builds(lambda shape, fill, dtype: torch.full(shape, fill).to(dtype),
                    st.lists(st.integers(0, 11), min_size=0, max_size=5).map(tuple),
                    st.sampled_from([0.0, 1.0, -3.5, float("nan"), float("inf")]),
                    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int32, torch.uint8]))
META_KEYS = ["dataset", "ipc", "class_names", "method", "flip", "protocol", "preprocess", "format", "config"]
set_damage = st.one_of(
    st.tuples(st.just("scale"), st.sampled_from(["images", "labels"]),
              st.sampled_from([0.0, -1.0, 1e-30, 1e6, 1e30, 1e39])),  # keeps shapes: often still a valid set
    st.tuples(st.just("tensor"), st.sampled_from(["images", "labels", "preprocess/extra"]), tensors),
    st.tuples(st.just("drop"), st.sampled_from(["images", "labels"] + META_KEYS), st.none()),
    st.tuples(st.just("meta"), st.sampled_from(META_KEYS + ["preprocess.kind", "preprocess.mean",
                                                           "preprocess.std", "protocol.depth"]), json_values),
    st.tuples(st.just("bytes"), st.integers(0, 4000), st.binary(max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 4000), st.none()),
)


def damaged_set(good: Path, target: Path, damages) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(good), framework="pt") as f:
        meta = json.loads(f.metadata()["rcig"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    raw_edits = []
    for kind, key, value in damages:
        if kind == "tensor":
            arrays[key] = value
        elif kind == "scale":
            if key in arrays:
                arrays[key] = arrays[key] * value
        elif kind == "drop":
            arrays.pop(key, None)
            meta.pop(key, None)
        elif kind == "meta":
            head, _, tail = key.partition(".")
            if tail and isinstance(meta.get(head), dict):
                meta[head] = {**meta[head], tail: value}
            else:
                meta[head] = value
        else:
            raw_edits.append((kind, key, value))
    save_file({k: v.contiguous() for k, v in arrays.items()}, str(target), metadata={"rcig": json.dumps(meta)})
    data = target.read_bytes()
    for kind, at, value in raw_edits:
        at = at % max(1, len(data))
        data = data[:at] + value + data[at + len(value):] if kind == "bytes" else data[:at]
    target.write_bytes(data)
    return target


@given(damages=st.lists(set_damage, min_size=1, max_size=3), command=st.sampled_from(["show", "eval"]),
       npz=st.booleans())
def test_fuzz_distilled_set_files(good_set, damages, command, npz):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = damaged_set(good_set, root / "set.safetensors", damages)
        if npz:  # the same content in the npz container
            try:
                ds = load(path)
            except Exception:  # noqa: BLE001 - refused as safetensors: try it as it is, renamed
                path = path.rename(root / "set.npz")
            else:
                from rcig.io import save

                save(ds, root / "set.npz")
                path.unlink()
                path = root / "set.npz"
        if command == "show":
            code, _, _ = cli(["show", path, "--out", root / "g.png"], root, [root / "g.png"])
            if code == 0:
                assert Image.open(root / "g.png").size[0] > 8
        else:
            code, out, _ = cli(["eval", path, *QUICK_EVAL, "--json", root / "e.json"], root, [root / "e.json"])
            if code == 0:
                report = json.loads((root / "e.json").read_text())
                assert 0 <= report["no_aug"]["mean"] <= 1 and report["file"] == path.name


# ----------------------------------------------------------------------- npz datasets

NPZ_DAMAGES = {
    "float images": lambda a, rng: {**a, "x_train": a["x_train"].astype(np.float32)},
    "bool images": lambda a, rng: {**a, "x_test": a["x_test"] > 128},
    "not square": lambda a, rng: {**a, "x_train": a["x_train"][:, :, :-1], "x_test": a["x_test"][:, :, :-1]},
    "4 channels": lambda a, rng: {**a, "x_train": np.repeat(a["x_train"][..., None], 4, -1)[..., :4]},
    "5-d images": lambda a, rng: {**a, "x_test": a["x_test"][None]},
    "constant": lambda a, rng: {**a, "x_train": np.full_like(a["x_train"], 7)},
    "two values": lambda a, rng: {**a, "x_train": (a["x_train"] > 128).astype(np.uint8) * 255},
    "one class": lambda a, rng: {**a, "y_train": np.zeros_like(a["y_train"]), "y_test": np.zeros_like(a["y_test"])},
    "negative label": lambda a, rng: {**a, "y_test": a["y_test"] - 1},
    "label too large": lambda a, rng: {**a, "y_train": a["y_train"] * 7},
    "no test images": lambda a, rng: {**a, "x_test": a["x_test"][:0], "y_test": a["y_test"][:0]},
    "no train images": lambda a, rng: {**a, "x_train": a["x_train"][:0], "y_train": a["y_train"][:0]},
    "float labels": lambda a, rng: {**a, "y_train": a["y_train"].astype(np.float32)},
    "int8 labels": lambda a, rng: {**a, "y_train": a["y_train"].astype(np.int8)},
    "2-d labels": lambda a, rng: {**a, "y_test": a["y_test"][:, None]},
    "labels too few": lambda a, rng: {**a, "y_train": a["y_train"][:-1]},
    "no x_test": lambda a, rng: {k: v for k, v in a.items() if k != "x_test"},
    "few class names": lambda a, rng: {**a, "class_names": np.array(["only"])},
    "many class names": lambda a, rng: {**a, "class_names": np.array([f"c{i}" for i in range(9)])},
    "numeric class names": lambda a, rng: {**a, "class_names": np.arange(int(a["y_train"].max()) + 1)},
    "2-d class names": lambda a, rng: {**a, "class_names": np.array([["a", "b"]])},
    "zero-size images": lambda a, rng: {**a, "x_train": a["x_train"][:, :0, :0], "x_test": a["x_test"][:, :0, :0]},
}


@st.composite
def npz_arrays(draw):
    """A valid npz dataset (some with images too small for herding's network) with 0-2 damages."""
    size, channels, classes = draw(st.sampled_from([2, 8, 8, 12])), draw(st.sampled_from([None, 1, 3])), \
        draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    arrays = {}
    for split, n in (("train", draw(st.integers(3 * classes, 24))), ("test", draw(st.integers(1, 8)))):
        shape = (n, size, size) + (() if channels is None else (channels,))
        arrays[f"x_{split}"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"y_{split}"] = np.arange(n) % classes
    for damage in draw(st.lists(st.sampled_from(sorted(NPZ_DAMAGES)), max_size=2, unique=True)):
        with contextlib.suppress(KeyError, ValueError):  # a damage of what an earlier one removed
            arrays = NPZ_DAMAGES[damage](arrays, rng)
    return arrays


@given(arrays=npz_arrays(), method=st.sampled_from(["random", "herding"]), ipc=st.integers(1, 3))
def test_fuzz_npz_datasets(arrays, method, ipc):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.savez(root / "d.npz", **arrays)
        out = root / "o.safetensors"
        code, _, _ = cli(["baseline", "--dataset", f"npz:{root / 'd.npz'}", "--ipc", ipc, "--method", method,
                          "--out", out], root, [out])
        if code == 0:
            ds = load(out)
            assert ds.labels.shape[0] == ipc * ds.labels.shape[1] and torch.isfinite(ds.images).all()


# ------------------------------------------------------------------ other tools' sets

def ext_array(a: np.ndarray) -> "msgpack.ExtType":
    """An ndarray as flax.serialization writes it (ext type 1: msgpack of shape, dtype, bytes)."""
    import msgpack

    return msgpack.ExtType(1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True))


def foreign_set(fmt: str, root: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """``images`` (N, C, H, W) and ``labels`` written in import format ``fmt`` under ``root``."""
    import msgpack

    def pt(a):  # what a torch file can hold: a tensor, or a list for an array of strings
        return a.tolist() if a.dtype.kind == "U" else torch.from_numpy(a)

    if fmt == "mtt":
        torch.save(pt(images), root / "images_best.pt")
        if labels is not None:
            torch.save(pt(labels), root / "labels_best.pt")
        return root / "images_best.pt"
    labels = np.zeros(0, np.int64) if labels is None else labels
    if fmt == "dc":
        torch.save({"data": [[pt(images), pt(labels)]]}, root / "set.pt")
        return root / "set.pt"
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if images.ndim == 4 else images
    if fmt == "kip":
        np.savez(root / "set.npz", images=nhwc, labels=labels)
        return root / "set.npz"
    support = {"x_proto": ext_array(nhwc), "y_proto": ext_array(np.ascontiguousarray(labels))}
    (root / "checkpoint_1").write_bytes(msgpack.packb({"ema_average" if fmt == "rcig" else "params": support},
                                                      use_bin_type=True))
    return root / "checkpoint_1"


@st.composite
def foreign_arrays(draw):
    """Images and labels, mostly of a digits-like shape, with empty, non-finite, wrongly shaped
    and wrongly typed cases mixed in; and whether the case is one rcig must refuse."""
    n = draw(st.sampled_from([0, 1, 2, 10, 10, 10]))
    shape = draw(st.sampled_from([(1, 8, 8)] * 4 + [(3, 8, 8), (4, 8, 8), (1, 8, 7), (1, 0, 0), (8, 8)]))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16, np.uint8]))
    images = np.random.default_rng(n).standard_normal((n, *shape)).astype(dtype)
    bad_value = draw(st.sampled_from([None] * 4 + [float("nan"), float("inf"), -float("inf"), 1e39]))
    if bad_value is not None and images.size and np.issubdtype(dtype, np.floating):
        with np.errstate(over="ignore"):
            images.reshape(-1)[draw(st.integers(0, images.size - 1))] = bad_value
    kind = draw(st.sampled_from(["index", "index", "soft", "soft", "none", "one column", "short", "nan", "text"]))
    labels = {"index": np.arange(n) % 10, "soft": np.random.default_rng(1).standard_normal((n, 10)).astype(np.float32),
              "one column": np.zeros((n, 1), np.float32), "short": np.arange(max(n - 1, 0)), "none": None,
              "nan": np.full((n, 10), np.nan, np.float32), "text": np.array(["a"] * n)}[kind]
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(images.astype(np.float32)).all()  # rcig's images are float32
    refuse = (n == 0 or len(shape) != 3 or shape[0] not in (1, 3) or shape[1] != shape[2] or shape[1] == 0
              or not finite or kind in ("one column", "short", "nan", "text"))
    return images, labels, kind, refuse


@given(arrays=foreign_arrays(), fmt=st.sampled_from(["mtt", "dc", "kip", "frepo", "rcig"]),
       dataset=st.sampled_from([None, "digits"]))
@example(arrays=(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), "index", True), fmt="dc", dataset=None)
@example(arrays=(np.full((10, 1, 8, 8), np.inf, np.float32), np.arange(10), "index", True), fmt="mtt",
         dataset="digits")
def test_fuzz_imports(arrays, fmt, dataset):
    """``rcig import`` of every format refuses empty, non-finite and wrongly shaped arrays in
    one line; what it writes, ``rcig.load`` reads back, finite."""
    images, labels, kind, refuse = arrays
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = foreign_set(fmt, root, images, labels)
        out = root / "o.safetensors"
        code, _, err = cli(["import", source, "--format", fmt, "--out", out]
                           + (["--dataset", dataset] if dataset else []), root, [out])
        if refuse:
            assert code == 2, (kind, images.shape, images.dtype)
        if code == 0:
            ds = load(out)
            assert len(ds) == len(images) and torch.isfinite(ds.images).all() and torch.isfinite(ds.labels).all()


# ---------------------------------------------------------------------- image folders

@st.composite
def image_folders(draw, root: Path) -> str:
    split, hostile = draw(st.booleans()), draw(st.booleans())  # hostile: odd files, modes, sizes, options
    classes = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, min_size=1 if hostile else 2,
                            max_size=3))
    usual_side = draw(st.sampled_from([8, 8, 8, 2, 12]))
    for part in (["train", "test"] if split else [""]):
        for name in classes:
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            count = st.integers(0, 5) if hostile else st.integers(1 if part == "test" else 2, 4)
            for i in range(draw(count)):
                # mostly decodable images of one size, so that whole folders are often valid
                kind = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "corrupt", "text", "empty"])) if hostile \
                    else draw(st.sampled_from(["L", "RGB"]))
                side = draw(st.sampled_from([usual_side, 1, 6, 9])) if hostile else usual_side
                path = folder / f"{i}.png"
                if kind == "corrupt":
                    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(draw(st.binary(max_size=20))))
                elif kind == "text":
                    (folder / f"{i}.txt").write_text("not an image")
                elif kind == "empty":
                    path.write_bytes(b"")
                else:
                    rng = np.random.default_rng([ord(name), i, len(part)])
                    pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                    Image.fromarray(pixels).convert(kind).save(path)
    query = draw(st.sampled_from(["", "?size=8", "?size=0", "?size=x", "?scale=2"])) if hostile else ""
    return f"imagefolder:{root}{query}"


@given(data=st.data())
def test_fuzz_image_folders(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = data.draw(image_folders(root / "f"))
        out = root / "o.npz"
        code, _, _ = cli(["baseline", "--dataset", spec, "--ipc", "1", "--out", out], root, [out])
        if code == 0:
            ds = load(out)
            assert len(ds.images) == ds.labels.shape[1] >= 2


# ---------------------------------------------------------------------- config overrides

KEYS = st.sampled_from([f.name for f in dataclasses.fields(Config)] + ["widht", "pool-size", "", "x=y"])
TEXT_VALUES = st.one_of(
    st.integers(-3, 12).map(str), st.sampled_from(["1e3", "2.5", "-0.5", "nan", "Infinity", "null", "none", "true",
                                                    "False", "[]", "[1]", "[null, 4]", "[1,2,3]", "crop",
                                                    "crop,rotate", "blur", "adam", "cg", "batch", "noise", "{}",
                                                    "9" * 25, "0x10", "", "[\"a\"]", "1,2"]),
    st.text(alphabet="abc,[]0123456789.-e\"", max_size=8))


@given(overrides=st.lists(st.tuples(KEYS, TEXT_VALUES), min_size=1, max_size=3))
def test_fuzz_config_overrides(overrides):
    costly = {"steps", "n_inner_steps", "n_hinv_steps", "pool_size", "width", "target_batch_size", "depth",
              "normal_repeats", "max_online_steps", "n_max_steps_pool"}
    # keep a valid run cheap: large *valid* sizes only cost time, which is not what this hunts
    assume(not any(k in costly and _number(v) > 12 for k, v in overrides))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = set_args(CONFIG)
        sets += [a for k, v in overrides for a in ("--set", f"{k}={v}")]
        out = root / "run"
        code, _, _ = cli(["distill", "--steps", "1", "--out", out, "--no-eval", "--quiet", *sets], root, [out])
        if code == 0:
            ds = load(out / "distilled.safetensors")
            assert ds.images.shape == (10, 1, 8, 8) and torch.isfinite(ds.images).all()


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


# ---------------------------------------------------------------------- run directories

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzzrun") / "r"
    sets = set_args(CONFIG)
    assert main(["distill", "--out", str(out), "--steps", "2", "--checkpoint-every", "1", "--no-eval", "--quiet",
                 *sets]) == 0
    return out


RUN_FILES = ["run.json", "log.jsonl", "checkpoints/latest.pt", "distilled.safetensors"]
run_damage = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(RUN_FILES), st.none()),
    st.tuples(st.just("truncate"), st.sampled_from(RUN_FILES), st.floats(0, 1)),
    st.tuples(st.just("bytes"), st.sampled_from(RUN_FILES), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("json"), st.sampled_from(["dataset", "ipc", "seed", "config", "config.width", "config.steps",
                                                "config.pool_size", "extra"]), json_values),
    st.tuples(st.just("state"), st.sampled_from(["iteration", "inner_lr", "support", "pool", "ema", "generator",
                                                 "inner_outcomes"]), st.sampled_from([None, -1, 2.5, "x", [], {}])),
)


def damage_run(run_dir: Path, damages) -> None:
    for kind, target, value in damages:
        if kind in ("delete", "truncate", "bytes"):
            path = run_dir / target
            if not path.exists():
                continue
            data = path.read_bytes()
            if kind == "delete":
                path.unlink()
            elif kind == "truncate":
                path.write_bytes(data[:int(len(data) * value)])
            else:
                at = int(len(data) * value[0])
                path.write_bytes(data[:at] + value[1] + data[at + len(value[1]):])
        elif kind == "json":
            path = run_dir / "run.json"
            try:
                stored = json.loads(path.read_text())
                head, _, tail = target.partition(".")
                if tail:
                    stored[head][tail] = value
                else:
                    stored[head] = value
            except Exception:  # noqa: BLE001 - already damaged beyond editing
                continue
            path.write_text(json.dumps(stored))
        else:
            path = run_dir / "checkpoints" / "latest.pt"
            try:
                state = torch.load(path, weights_only=True)
                state[target] = value
            except Exception:  # noqa: BLE001
                continue
            torch.save(sealed(state), path)  # a well-formed file of a wrong state, past the checksum


@given(damages=st.lists(run_damage, min_size=1, max_size=3), steps=st.sampled_from([None, 2, 3]))
@example(damages=[("bytes", "checkpoints/latest.pt", (0.125, b"b"))], steps=3)  # resumed, then a failed Cholesky
def test_fuzz_run_directories_on_resume(finished_run, damages, steps):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run_dir = shutil.copytree(finished_run, root / "r")
        damage_run(run_dir, damages)
        argv = ["distill", "--out", run_dir, "--resume", "--no-eval", "--quiet"] + (["--steps", steps] if steps else [])
        lock = {run_dir / LOCK_FILE}  # who holds the folder (pid, start time): every attempt writes it
        before = tree_hashes(run_dir, lock)
        code, _, _ = cli(argv, root, [run_dir])
        if code == 2:  # refused before writing anything
            assert tree_hashes(run_dir, lock) == before
        else:
            ds = load(run_dir / "distilled.safetensors")
            assert torch.isfinite(ds.images).all()
            final = json.loads((run_dir / "run.json").read_text())["config"]["steps"]
            log = run_dir / "log.jsonl"
            iters = [json.loads(line)["iter"] for line in log.read_text().splitlines()] if log.exists() else []
            assert iters == sorted(set(iters)) and all(1 <= i <= final for i in iters)
