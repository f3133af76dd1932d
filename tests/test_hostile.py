"""Hostile inputs of every kind end in one line ``rcig: error: ...`` and exit status 2, before
any work starts; a bug ends in one line saying so (exit 70)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import TINY, one_line_error, run, set_args
from rcig.run.checkpoint import sealed
from rcig.run.folder import LOCK_FILE
from rcig.cli import main
from rcig.config import from_dict, parse_overrides
from rcig.errors import RcigError
from rcig.io import load

ROOT = Path(__file__).resolve().parents[1]
# pool networks stay trained for the run (the full-disk test needs them in its second checkpoint)
TINY_SETS = set_args({**TINY, "pool_size": 2, "target_batch_size": 64, "max_online_steps": 100})


# ------------------------------------------------------------------ distilled-set files

@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "good.safetensors"
    assert main(["baseline", "--dataset", "digits", "--ipc", "1", "--out", str(path)]) == 0
    return path


def rewrite(good: Path, target: Path, meta=None, **tensors) -> Path:
    """``good`` with some tensors or the metadata replaced (None removes a key)."""
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        stored = json.loads(f.metadata()["rcig"])
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in tensors.items():
        arrays.pop(k) if v is None else arrays.__setitem__(k, v)
    meta = meta(stored) if callable(meta) else (stored if meta is None else meta)
    save_file(arrays, str(target), metadata={"rcig": meta if isinstance(meta, str) else json.dumps(meta)})
    return target


def drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def change(**kv):
    return lambda m: {**m, **kv}


SET_CASES = {
    "metadata a list": (dict(meta=json.dumps([1, 2])), "not an rcig distilled set"),
    "no dataset key": (dict(meta=drop("dataset")), "lacks the dataset spec"),
    "no preprocess key": (dict(meta=drop("preprocess")), "lacks the preprocessing"),
    "preprocess a string": (dict(meta=change(preprocess="zca")), "lacks the preprocessing"),
    "std zero": (dict(meta=lambda m: {**m, "preprocess": {**m["preprocess"], "std": [0.0]}}), "std must be > 0"),
    "zca without matrices": (dict(meta=lambda m: {**m, "preprocess": {**m["preprocess"], "kind": "zca"}}),
                             "ZCA matrix"),
    "protocol depth text": (dict(meta=change(protocol={"depth": "3"})), "protocol depth"),
    "unknown augmentation": (dict(meta=change(protocol={"augmentations": ["blur"]})), "augmentations"),
    "class_names too short": (dict(meta=change(class_names=["a", "b"])), "names 2 classes"),
    "NaN image": (dict(images=torch.full((10, 1, 8, 8), float("nan"))), "NaN or infinite"),
    "inf label": (dict(labels=torch.full((10, 10), float("inf"))), "NaN or infinite"),
    "zero rows": (dict(images=torch.zeros(0, 1, 8, 8), labels=torch.zeros(0, 10)), "zero rows"),
    "integer images": (dict(images=torch.zeros(10, 1, 8, 8, dtype=torch.int32)), "floating point"),
    "no labels": (dict(labels=None), "lacks the 'images' or 'labels'"),
    "3-d images": (dict(images=torch.zeros(10, 8, 8)), "do not fit"),
}


@pytest.mark.parametrize("case", SET_CASES)
@pytest.mark.parametrize("command", ["eval", "show"])
def test_malformed_distilled_sets_are_refused_on_load(tmp_path, capsys, good_set, case, command):
    changes, message = SET_CASES[case]
    bad = rewrite(good_set, tmp_path / "bad.safetensors", **changes)
    extra = ["--out", tmp_path / "g.png"] if command == "show" else ["--models", "1", "--steps", "2"]
    one_line_error(*run([command, bad, *extra], capsys)[::2], message)
    assert not (tmp_path / "g.png").exists()


def test_a_set_with_the_wrong_number_of_classes_is_not_scored(tmp_path, capsys, good_set):
    bad = rewrite(good_set, tmp_path / "k.safetensors", meta=drop("class_names"), labels=torch.zeros(10, 4))
    one_line_error(*run(["eval", bad, "--models", "1", "--steps", "2"], capsys)[::2], "labels for 4 classes")


def test_npz_sets_and_non_zip_files(tmp_path, capsys, good_set):
    (tmp_path / "text.npz").write_text("hello")
    one_line_error(*run(["eval", tmp_path / "text.npz"], capsys)[::2], "not an .npz archive")
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    one_line_error(*run(["show", tmp_path / "single.npz"], capsys)[::2], "single .npy array")
    one_line_error(*run(["eval", tmp_path], capsys)[::2], "is a folder")


def test_the_shipped_sets_pass_validation_and_carry_no_absolute_path():
    for path in sorted((ROOT / "distilled").glob("*.safetensors")):
        load(path)
        report = json.loads(path.with_suffix(".eval.json").read_text())
        assert report["file"] == path.name


# ---------------------------------------------------------------------------- datasets

def npz_spec(path, **override):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), "y_train": np.arange(20) % 2,
              "x_test": rng.integers(0, 256, (4, 8, 8), dtype=np.uint8), "y_test": np.arange(4) % 2}
    arrays.update(override)
    np.savez(path, **arrays)
    return f"npz:{path}"


DATASET_CASES = {
    "constant images": (dict(x_train=np.full((20, 8, 8), 9, np.uint8)), "constant"),
    "one image repeated": (dict(x_train=np.repeat(np.arange(192, dtype=np.uint8).reshape(1, 8, 8, 3), 20, 0),
                                x_test=np.zeros((4, 8, 8, 3), np.uint8)), "all the same image"),
    "one class": (dict(y_train=np.zeros(20, int), y_test=np.zeros(4, int)), "at least 2 classes"),
    "no test images": (dict(x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, int)), "test split holds no"),
    "class without training images": (dict(y_train=np.zeros(20, int)), "larger than class '1', which has 0"),
    "float images": (dict(x_train=np.zeros((20, 8, 8), np.float32)), "uint8"),
    "object class names": (dict(class_names=np.array([{"a": 1}, 2], dtype=object)), "Python objects"),
}


@pytest.mark.parametrize("case", DATASET_CASES)
def test_malformed_npz_datasets(tmp_path, capsys, case):
    override, message = DATASET_CASES[case]
    spec = npz_spec(tmp_path / "d.npz", **override)
    one_line_error(*run(["baseline", "--dataset", spec, "--ipc", "1", "--out", tmp_path / "o.npz"], capsys)[::2],
                   message)
    assert not (tmp_path / "o.npz").exists()


def test_images_too_small_for_the_network(tmp_path, capsys):
    rng = np.random.default_rng(0)
    spec = npz_spec(tmp_path / "d.npz", x_train=rng.integers(0, 256, (20, 2, 2), dtype=np.uint8),
                    x_test=rng.integers(0, 256, (4, 2, 2), dtype=np.uint8))
    for argv in (["distill", "--dataset", spec, "--out", tmp_path / "r", "--steps", "1", *TINY_SETS],
                 ["baseline", "--dataset", spec, "--method", "herding", "--out", tmp_path / "h.npz"],
                 ["distill", "--set", "depth=4", "--out", tmp_path / "r4", "--steps", "1", *TINY_SETS]):
        one_line_error(*run(argv, capsys)[::2], "too small for the conv network")
    assert run(["baseline", "--dataset", spec, "--ipc", "1", "--out", tmp_path / "b.npz"], capsys)[0] == 0
    one_line_error(*run(["eval", tmp_path / "b.npz", "--models", "1", "--steps", "2"], capsys)[::2], "too small")


def image_folder(root: Path, counts: dict, corrupt: str | None = None) -> str:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    if corrupt:
        (root / corrupt / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return f"imagefolder:{root}"


@pytest.mark.parametrize("layout,message", [
    (lambda r: image_folder(r, {"a": 4, "b": 4}, corrupt="a"), "cannot read image"),
    (lambda r: image_folder(r, {"a": 1, "b": 4}), "fewer than 2 images"),
    (lambda r: image_folder(r / "train", {"a": 2, "b": 2}) and (r / "test").mkdir() or f"imagefolder:{r}",
     "test split holds no images"),
    (lambda r: image_folder(r, {"only": 6}), "at least 2 classes"),
    (lambda r: image_folder(r / "train", {"a": 2, "b": 2}) and image_folder(r / "test", {"a": 1, "b": 1, "c": 1})
     and f"imagefolder:{r}", "test holds class folder(s) c that"),
])
def test_malformed_image_folders(tmp_path, capsys, layout, message):
    spec = layout(tmp_path / "f")
    one_line_error(*run(["baseline", "--dataset", spec, "--ipc", "1", "--out", tmp_path / "o.npz"], capsys)[::2],
                   message)


def test_datasets_listing_with_a_missing_data_dir(tmp_path, capsys):
    one_line_error(*run(["datasets", "--data-dir", tmp_path / "nope"], capsys)[::2], "no such folder")


# ------------------------------------------------------------------------ config values

@pytest.mark.parametrize("item,message", [
    ("ema_decay=x", "ema_decay must be a number, got 'x'"),
    ("width=abc", "width must be an integer"),
    ("width=2.5", "width must be an integer"),
    ("proto_lr=Infinity", "proto_lr must be a number"),
    ("checkpoint_iters=[1,\"a\"]", "checkpoint_iters must be a list of integers"),
    ("flip=maybe", "flip must be true or false"),
    ("inner_lr=[1]", "inner_lr must be a number or null"),
    ("direct_batch_sizes=5", "direct_batch_sizes must be [support_rows, target_rows]"),
    ("test_augmentations=crop,blur", "unknown augmentation(s) ['blur']"),
])
def test_config_types_are_checked_by_name(tmp_path, capsys, item, message):
    one_line_error(*run(["distill", "--set", item, "--out", tmp_path / "r", "--steps", "1"], capsys)[::2], message)
    assert not (tmp_path / "r").exists()


def test_list_fields_take_one_bare_value_or_a_comma_list():
    assert parse_overrides(["test_augmentations=crop"]) == {"test_augmentations": ["crop"]}
    assert from_dict(parse_overrides(["test_augmentations=crop,rotate"])).test_augmentations == ("crop", "rotate")
    assert from_dict(parse_overrides(["checkpoint_iters=3"])).checkpoint_iters == (3,)
    assert from_dict(parse_overrides(["direct_batch_sizes=4,null"])).direct_batch_sizes == (4, None)
    assert from_dict(parse_overrides(["description=123", "steps=1e3"])).steps == 1000
    # a string field takes its text or the same text JSON-quoted (what json.dumps writes)
    assert parse_overrides(['solver="cg"', "norm=batch"]) == {"solver": "cg", "norm": "batch"}
    assert from_dict(parse_overrides(['solver="cg"'])).solver == "cg"
    # the same from Python (rcig.distill(overrides=...)) and JSON: one value for a list field
    assert from_dict({"test_augmentations": "crop", "checkpoint_iters": 5}).test_augmentations == ("crop",)
    assert from_dict({"checkpoint_iters": 5.0}).checkpoint_iters == (5,)
    with pytest.raises(RcigError, match="bad preset x: width must be an integer"):
        from_dict({"width": "8"}, where="preset x")


# ---------------------------------------------------------------- command-line numbers

@pytest.mark.parametrize("argv", [["distill", "--seed", "9" * 30], ["distill", "--max-minutes", "-1"],
                                  ["distill", "--max-minutes", "nan"], ["baseline", "--seed", "-3"],
                                  ["distill", "--steps", "ten"], ["frobnicate"]])
def test_bad_numbers_and_commands_end_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    one_line_error(info.value.code, capsys.readouterr().err)


# ------------------------------------------------------------------------ output paths

def test_output_paths_are_checked_before_any_work(tmp_path, capsys, good_set):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["distill", "--out", tmp_path / "afile", "--steps", "1"], "is an existing file"),
        (["distill", "--out", tmp_path / "afile" / "run", "--steps", "1"], "is a file, not a folder"),
        (["baseline", "--out", tmp_path], "is a folder"),
        (["baseline", "--out", tmp_path / "b.txt"], "use .safetensors or .npz"),
        (["show", good_set, "--out", tmp_path / "g.xyz"], "has '.xyz'"),
        (["show", good_set, "--out", tmp_path / "g"], "has no extension"),
        (["show", good_set, "--out", tmp_path], "is a folder"),
        (["eval", good_set, "--json", tmp_path, "--steps", "100000"], "is a folder"),
        (["eval", good_set, "--json", tmp_path / "e.txt", "--steps", "100000"], "use .json"),
    ]
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        one_line_error(code, err, message)
        assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_eval_json_stores_the_set_path_relative_to_itself(tmp_path, capsys, good_set):
    target = tmp_path / "reports" / "e.json"
    assert run(["eval", good_set, "--models", "1", "--steps", "3", "--test-limit", "20", "--json", target],
               capsys)[0] == 0
    stored = json.loads(target.read_text())["file"]
    assert not Path(stored).is_absolute() and (target.parent / stored).resolve() == good_set.resolve()


# --------------------------------------------------------------------- run directories

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["distill", "--out", str(out), "--steps", "2", "--no-eval", "--quiet", *TINY_SETS]) == 0
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def damage_checkpoint(run_dir: Path, change, seal: bool = True) -> None:
    """Change the saved state; ``seal``: with a matching checksum (a well-formed file of a wrong
    state, as a bug or another run could leave), else the old one (damage on disk)."""
    path = run_dir / "checkpoints" / "latest.pt"
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(sealed(state) if seal else state, path)


@pytest.mark.parametrize("damage,message", [
    (lambda r: (r / "run.json").write_text("{not json"), "run.json is not valid JSON"),
    (lambda r: (r / "run.json").write_text("[1, 2]"), "not an rcig run description"),
    (lambda r: (r / "run.json").write_text(json.dumps({**json.loads((r / "run.json").read_text()), "ipc": "1"})),
     "'ipc' is missing or malformed"),
    (lambda r: (r / "run.json").write_text(json.dumps({**json.loads((r / "run.json").read_text()),
                                                      "config": {"width": "eight"}})), "width must be an integer"),
    (lambda r: (r / "checkpoints" / "latest.pt").write_bytes(b"garbage"), "cannot read checkpoint"),
    (lambda r: torch.save({"iteration": 1}, r / "checkpoints" / "latest.pt"), "not a checkpoint of this run"),
    (lambda r: damage_checkpoint(r, lambda state: state["support"]["x"].mul_(1.001), seal=False),
     "latest.pt is damaged (its contents do not match the checksum saved with them)"),
    (lambda r: damage_checkpoint(r, lambda state: state["support"].update(x=torch.zeros(3, 1, 8, 8))),
     "not a checkpoint of this run (state.support.x: expected torch.float32 (10, 1, 8, 8)"),
    (lambda r: damage_checkpoint(r, lambda state: state["pool"]["members"].pop()), "the pool holds 1 networks"),
    (lambda r: (r / "log.jsonl").write_text("garbage\n" + (r / "log.jsonl").read_text()), "line 1 is not a log"),
])
def test_damaged_run_folders_are_refused_on_resume(tmp_path, capsys, finished_run, damage, message):
    run_dir = copy_run(finished_run, tmp_path / "r")
    damage(run_dir)
    files = lambda: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE}  # noqa: E731
    before = files()
    one_line_error(*run(["distill", "--out", run_dir, "--resume", "--steps", "3", "--no-eval", "--quiet"],
                        capsys)[::2], message)
    assert files() == before  # the lock file names the last holder, nothing else changed


def test_resume_with_overrides_and_steps(tmp_path, capsys, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "r")
    # an override on --resume applies to the stored config: only a real difference is named
    one_line_error(*run(["distill", "--out", run_dir, "--resume", "--set", "width=16"], capsys)[::2],
                   "differs in config.width")
    one_line_error(*run(["distill", "--out", run_dir, "--resume", "--steps", "1"], capsys)[::2],
                   "it is at iteration 2 already")
    assert run(["distill", "--out", run_dir, "--resume", "--set", "width=8", "--steps", "3", "--no-eval", "--quiet"],
               capsys)[0] == 0
    assert json.loads((run_dir / "run.json").read_text())["config"]["steps"] == 3


# ------------------------------------------------------ one process per folder, faults

def test_one_process_per_run_folder_while_readers_stay_free(tmp_path, capsys, finished_run):
    import socket

    from rcig.run.folder import RunFolder

    run_dir = copy_run(finished_run, tmp_path / "r")
    holder = RunFolder(run_dir)
    holder.lock()  # as a live run holds it (a lock is per open file, so this process counts as another)
    try:
        for argv in (["distill", "--out", run_dir, "--resume", "--steps", "3"], ["distill", "--out", run_dir]):
            one_line_error(*run([*argv, "--no-eval", "--quiet"], capsys)[::2],
                           f"{run_dir} is in use by another rcig process (pid {os.getpid()} on {socket.gethostname()}, "
                           "started ")
        assert run(["report", run_dir], capsys)[0] == 0  # readers take no lock
    finally:
        holder.release()
    assert run(["distill", "--out", run_dir, "--resume", "--steps", "3", "--no-eval", "--quiet"], capsys)[0] == 0


def test_a_full_disk_ends_the_run_in_one_line_and_resume_continues(tmp_path):
    """A file-size limit between the iteration-0 checkpoint (untrained pool: seeds) and the next
    one (trained networks) makes the second checkpoint write fail as a full disk would."""
    import resource
    import signal
    import subprocess
    import sys

    from rcig.run.checkpoint import load_checkpoint

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    out = tmp_path / "r"
    argv = [sys.executable, "-m", "rcig", "distill", "--out", str(out), "--steps", "2", "--checkpoint-every", "1",
            "--no-eval", "--quiet", *TINY_SETS]
    done = subprocess.run(argv, preexec_fn=limit_file_size, capture_output=True, text=True, timeout=300)
    latest = out / "checkpoints" / "latest.pt"
    one_line_error(done.returncode, done.stderr, f"rcig: error: cannot write {latest}: File too large; the last "
                   f"checkpoint stands: continue with: rcig distill --out {out} --resume")
    assert load_checkpoint(latest)["iteration"] == 0 and not list(out.rglob(".*.tmp"))
    done = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(latest)["iteration"] == 2


WRITERS = """
import resource, signal, sys
import numpy as np, torch
from PIL import Image
from safetensors.torch import save
from rcig.atomic import WriteError, atomic_write, atomic_write_text
from rcig.run.checkpoint import save_checkpoint
folder = sys.argv[1]
writers = {"latest.pt": lambda p: save_checkpoint(p, {"w": torch.zeros(100_000)}),
           "set.safetensors": lambda p: atomic_write(p, lambda fh: fh.write(save({"w": torch.zeros(100_000)}))),
           "set.npz": lambda p: atomic_write(p, lambda fh: np.savez(fh, w=np.zeros(100_000))),
           "grid.png": lambda p: atomic_write(p, lambda fh: Image.fromarray(
               np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(fh, format="PNG")),
           "report.html": lambda p: atomic_write_text(p, "x" * 100_000)}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
for name, write in writers.items():
    try:
        write(f"{folder}/{name}")
        print(name, "written")
    except WriteError as exc:
        print(exc)
"""


def test_every_writer_names_the_file_and_the_reason_when_the_disk_refuses(tmp_path):
    """torch's and PIL's writers replace the filesystem's error by one of their own: the file
    handed to them remembers it, so each says 'File too large', and the old file stays."""
    import subprocess
    import sys

    names = ["latest.pt", "set.safetensors", "set.npz", "grid.png", "report.html"]
    for name in names:
        (tmp_path / name).write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", WRITERS, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [f"cannot write {tmp_path / name}: File too large" for name in names], done
    assert all((tmp_path / name).read_bytes() == b"old" for name in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # no temporary file left


def test_a_read_only_folder_ends_the_run_in_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    from rcig.run.checkpoint import load_checkpoint

    real, writes = tempfile.mkstemp, []

    def mkstemp(*args, dir=None, **kwargs):  # the second checkpoint's write meets a read-only filesystem
        writes.extend([dir] if str(dir).endswith("checkpoints") else [])
        if len(writes) == 2:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    out = tmp_path / "r"
    code, _, err = run(["distill", "--out", out, "--steps", "3", "--checkpoint-every", "1", "--no-eval", "--quiet",
                        *TINY_SETS], capsys)
    one_line_error(code, err, f"cannot write {out / 'checkpoints' / 'latest.pt'}: Read-only file system; the last "
                   "checkpoint stands")
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into folders without write permission")
def test_an_unwritable_checkpoint_folder_ends_the_run_in_one_line(tmp_path, capsys, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "r")
    (run_dir / "checkpoints").chmod(0o555)
    try:
        one_line_error(*run(["distill", "--out", run_dir, "--resume", "--steps", "3", "--no-eval", "--quiet"],
                            capsys)[::2], "Permission denied; the last checkpoint stands")
    finally:
        (run_dir / "checkpoints").chmod(0o755)
    assert run(["distill", "--out", run_dir, "--resume", "--steps", "3", "--no-eval", "--quiet"], capsys)[0] == 0


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: not enough memory: you tried "
                                                               "to allocate 123456789 bytes.")])
def test_out_of_memory_in_a_step_says_what_to_lower_and_keeps_the_finished_iterations(tmp_path, capsys, monkeypatch,
                                                                                     error):
    from rcig.algorithm.outer import Distiller
    from rcig.run.checkpoint import load_checkpoint

    real = Distiller.step

    def step(self, state):
        if state.iteration == 2:
            raise error
        return real(self, state)

    monkeypatch.setattr(Distiller, "step", step)
    out = tmp_path / "r"
    code, _, err = run(["distill", "--out", out, "--steps", "4", "--no-eval", "--quiet", *TINY_SETS], capsys)
    one_line_error(code, err, "out of memory in iteration 3")
    assert "the checkpoint holds iteration 2" in err and "--ipc or target_batch_size" in err
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == 2  # not a periodic one (every 10)


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes.")])
def test_out_of_memory_outside_a_step_is_the_users_to_lower_not_a_bug(monkeypatch, capsys, good_set, tmp_path, error):
    import rcig.viz

    def allocation_fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(rcig.viz, "save_grid", allocation_fails)
    code, _, err = run(["show", good_set, "--out", tmp_path / "g.png"], capsys)
    one_line_error(code, err, "out of memory (try a smaller --ipc, width or batch size)")


# ----------------------------------------------------------------------------- bugs

def test_a_bug_ends_in_one_line_that_says_so(monkeypatch, capsys, good_set, tmp_path):
    import rcig.viz

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(rcig.viz, "save_grid", broken)
    code, _, err = run(["show", good_set, "--out", tmp_path / "g.png"], capsys)
    lines = err.strip().splitlines()
    assert code == 70 and len(lines) == 1 and "a bug in rcig" in lines[0] and "RCIG_DEBUG=1" in lines[0]
    monkeypatch.setenv("RCIG_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        main(["show", str(good_set), "--out", str(tmp_path / "g.png")])
