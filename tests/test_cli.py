"""The command line end to end on digits, the file format, and every bad input's one-liner."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_line_error, run
from rcig.cli import main
from rcig.errors import RcigError
from rcig.io import DistilledSet, load, save

ROOT = Path(__file__).resolve().parents[1]


def test_baseline_eval_show_on_digits(tmp_path, capsys):
    f = tmp_path / "d.safetensors"
    assert run(["baseline", "--dataset", "digits", "--ipc", "2", "--out", str(f)], capsys)[0] == 0
    code, out, _ = run(["eval", str(f), "--models", "1", "--steps", "30", "--test-limit", "100",
                        "--json", str(tmp_path / "e.json")], capsys)
    assert code == 0 and "no_aug" in out
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report) >= {"no_aug", "aug", "dataset", "ipc"} and report["ipc"] == 2
    for name in ("no_aug", "aug"):
        assert set(report[name]) == {"mean", "std", "accs", "diverged"} and 0 <= report[name]["mean"] <= 1
        assert report[name]["diverged"] == []
    assert run(["show", str(f), "--out", str(tmp_path / "g.png")], capsys)[0] == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[1] > 10 * 8
    # --init changes the protocol networks (the default is the reference's) and is recorded
    accs = {}
    for init in ("reference", "torch"):
        code, _, _ = run(["eval", str(f), "--models", "1", "--steps", "30", "--test-limit", "100", "--settings",
                          "no_aug", "--init", init, "--json", str(tmp_path / f"{init}.json")], capsys)
        report = json.loads((tmp_path / f"{init}.json").read_text())
        assert code == 0 and report["init"] == init
        accs[init] = report["no_aug"]["accs"]
    default = json.loads((tmp_path / "e.json").read_text())["no_aug"]["accs"]
    assert accs["reference"] == default != accs["torch"]


def test_file_round_trip_is_exact_and_atomic(tmp_path):
    ds = DistilledSet(torch.randn(4, 3, 5, 5), torch.randn(4, 2),
                      {"dataset": "x", "preprocess": {"kind": "zca", "mean": [0, 0, 0], "std": [1, 1, 1]}},
                      {"whiten": np.eye(75, dtype=np.float32), "unwhiten": np.eye(75, dtype=np.float32)})
    for name in ("a.safetensors", "a.npz"):
        save(ds, tmp_path / name)
        back = load(tmp_path / name)
        assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
        assert back.meta["dataset"] == "x" and np.array_equal(back.preprocess_arrays["whiten"], np.eye(75))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "a.safetensors"]  # no temp files


def test_foreign_or_corrupt_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(RcigError, match="not an rcig distilled set"):
        load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(RcigError, match="not a readable"):
        load(tmp_path / "junk.safetensors")


def bad_npz(path, **override):
    arrays = {"x_train": np.zeros((20, 8, 8), np.uint8), "y_train": np.arange(20) % 2,
              "x_test": np.zeros((4, 8, 8), np.uint8), "y_test": np.arange(4) % 2}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return f"npz:{path}"


@pytest.mark.parametrize("argv_of,message", [
    (lambda t: ["eval", str(t / "missing.safetensors")], "no such file"),
    (lambda t: ["baseline", "--dataset", "imagenet9"], "unknown dataset"),
    (lambda t: ["baseline", "--dataset", f"npz:{t / 'none.npz'}"], "no such file"),
    (lambda t: ["baseline", "--dataset", bad_npz(t / "k.npz", y_test=None)], "lacks the key"),
    (lambda t: ["baseline", "--dataset", bad_npz(t / "s.npz", x_train=np.zeros((20, 8), np.uint8))], "shape"),
    (lambda t: ["baseline", "--dataset", bad_npz(t / "r.npz", y_train=np.arange(20) - 3)], "labels must lie"),
    (lambda t: ["baseline", "--dataset", "digits", "--ipc", "500"], "larger than class"),
    (lambda t: ["distill", "--set", "pool_model_6count=3", "--out", str(t / "r")], "unknown config key"),
    (lambda t: ["distill", "--out", str(t / "nothing"), "--resume"], "nothing to resume"),
    (lambda t: ["distill", "--set", "solver=cg", "--set", "linearize=false", "--out", str(t / "r")],
     "solver cg needs linearize=true"),
])
def test_bad_inputs_end_in_one_line(tmp_path, capsys, argv_of, message):
    one_line_error(*run(argv_of(tmp_path), capsys)[::2], message)


@pytest.mark.parametrize("argv", [["baseline", "--ipc", "-2"], ["eval", "x", "--models", "0"],
                                  ["distill", "--steps", "ten"]])
def test_bad_numbers_are_rejected_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_installed_entry_point_and_datasets_listing():
    out = subprocess.run([str(Path(sys.executable).with_name("rcig")), "datasets"], capture_output=True, text=True)
    assert out.returncode == 0 and "digits" in out.stdout and "found" in out.stdout
    module = subprocess.run([sys.executable, "-m", "rcig", "--version"], capture_output=True, text=True)
    assert module.returncode == 0 and "rcig" in module.stdout


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(line.strip() for line in readme.splitlines() if "pytest" in line and line.strip().startswith("python3 -m venv"))
    assert test_command in ci


def test_offline_download_says_so_and_what_to_fetch(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    from rcig.data import sources

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("RCIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(sources, "candidate_dirs", lambda data_dir, names: [])  # nothing installed locally
    code, out, err = run(["datasets"], capsys)
    assert code == 0 and "downloads it on first use from https://ossci-datasets" in out
    assert str(tmp_path / "cache" / "datasets" / "mnist") in out
    code, _, err = run(["baseline", "--dataset", "mnist"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" not in err
    for word in ("downloading them failed", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "https://ossci-datasets.s3.amazonaws.com/mnist/", str(tmp_path / "cache" / "datasets" / "mnist")):
        assert word in err, (word, err)


def test_every_command_has_a_description_examples_and_readable_options(capsys):
    from rcig.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"datasets", "distill", "baseline", "eval", "export", "import", "report", "show"}
    for name, sub in commands.items():
        text = sub.format_help()
        assert sub.description and "examples:\n  rcig " + name in text, name
        assert "--quiet" in text, name  # every command can be quiet
        metavars = [a.metavar for a in sub._actions if a.option_strings and a.metavar]
        assert all("_" not in m for m in metavars), (name, metavars)  # N, DIR, FILE, not CHECKPOINT_EVERY
    distill = commands["distill"].format_help()
    assert "(default: 10)" in distill and "--no-baseline" in distill  # defaults shown
    assert "(default: 1)" in commands["baseline"].format_help()  # the same ipc default as distill
    assert commands["baseline"].get_default("ipc") == 1


@pytest.mark.parametrize("argv,expected", [
    ([], "rcig: error: the following arguments are required: COMMAND (see rcig --help)"),
    (["distil"], "rcig: error: argument COMMAND: invalid choice: 'distil'; did you mean distill? (see rcig --help)"),
    (["eval", "x", "--settings", "bth"], "did you mean both?"),
    (["distill", "--steps", "ten"], "rcig: error: argument --steps: expected a non-negative integer, got 'ten'"),
])
def test_parser_errors_have_one_prefix_and_suggest(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert err.count("rcig:") == 1


def test_outputs_are_never_overwritten_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(["baseline", "--quiet"], capsys)[0] == 0  # the default place, with distill's default ipc
    made = tmp_path / "runs" / "digits_random_ipc1.safetensors"
    assert made.is_file()
    assert run(["show", str(made)], capsys)[0] == 0  # beside the set
    picture = made.with_suffix(".png")
    assert picture.read_bytes().startswith(b"\x89PNG")
    picture.write_bytes(b"the user's own file")
    for argv in (["baseline"], ["show", str(made)], ["show", str(made), "--out", str(picture)],
                 ["export", str(made), "--format", "npz", "--out", str(picture)]):
        code, _, err = run(argv, capsys)
        assert code == 2 and "exists; pass --force" in err, (argv, err)
    assert picture.read_bytes() == b"the user's own file"
    assert run(["show", str(made), "--force"], capsys)[0] == 0
    assert picture.read_bytes().startswith(b"\x89PNG")


def test_distill_scores_random_real_images_beside_the_set_unless_told_not_to(tmp_path, capsys, monkeypatch):
    import rcig.cli

    calls = []
    monkeypatch.setattr(rcig.cli, "evaluate_and_print", lambda path, **options: calls.append(options) or {})
    tiny = ["--set", "width=8", "--set", "pool_size=3", "--set", "target_batch_size=64", "--set",
            "max_online_steps=4", "--set", "inner_lr=3e-3", "--set", "hvp_lr=3e-3"]
    for extra, compare in (([], "random"), (["--no-baseline"], None)):
        out = tmp_path / f"r{len(calls)}"
        code, _, err = run(["distill", "--steps", "1", "--quiet", "--out", str(out), *tiny, *extra], capsys)
        assert code == 0, err
        assert calls[-1]["compare"] == compare and calls[-1]["json_out"] == out / "eval.json"


def test_the_cli_reference_lists_every_option_of_every_command():
    import argparse

    from rcig.cli import build_parser

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    rows = {line.split("`")[1].split()[1]: line for line in doc.splitlines() if line.startswith("| `rcig ")}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(rows) == sorted(commands)
    for name, parser in commands.items():
        synopsis = rows[name].split("`")[1]
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "--quiet"):
                    assert f"{option} " in synopsis + " " or f"{option}]" in synopsis, (name, option)
