"""DD-Ranking's scores against hand-computed values, cross-architecture eval in one call, and
the run report."""

import base64
import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from conftest import TINY, one_line_error, run
from rcig.cli import main
from rcig.evaluation.ranking import ars, hlr, lrs, normalise, ranking_scores
from rcig.io import load


# ------------------------------------------------------------------------- DD-Ranking

def test_normalisation_maps_minus_one_to_one_onto_zero_to_one():
    assert normalise(-1) == pytest.approx(0) and normalise(1) == pytest.approx(1)
    assert normalise(0) == pytest.approx(0.2689414, abs=1e-7)  # (1 - 1/e) / (e - 1/e)


def test_ior_and_ars_against_hand_computed_values():
    syn = {"no_aug": {"accs": [0.80, 0.60]}, "aug": {"accs": [0.90, 0.70]}}
    rdm = {"no_aug": {"accs": [0.50, 0.50]}, "aug": {"accs": [0.60, 0.50]}}
    scores = ranking_scores(syn, rdm)
    assert scores["ior"]["no_aug"]["values"] == pytest.approx([0.30, 0.10])
    assert scores["ior"]["no_aug"]["mean"] == pytest.approx(0.20) and scores["ior"]["aug"]["mean"] == pytest.approx(0.25)
    # seed 0: b = 0.5 * 0.3 + 0.5 * 0.3 = 0.30 -> (e^0.3 - e^-1) / (e - e^-1) = 0.981980 / 2.350402 = 0.417793
    # seed 1: b = 0.5 * 0.2 + 0.5 * 0.1 = 0.15 -> (e^0.15 - e^-1) / (e - e^-1) = 0.793955 / 2.350402 = 0.337795
    assert scores["ars"]["values"] == pytest.approx([0.417793, 0.337795], abs=1e-6)
    assert scores["ars"]["mean"] == pytest.approx(0.377794, abs=1e-6)
    assert scores["ars"]["std"] == pytest.approx(0.039999, abs=1e-6)
    assert ars(0.9, 0.6, 0.8, 0.5, gamma=1.0) == pytest.approx(normalise(0.3))
    assert "ars" not in ranking_scores({"aug": syn["aug"]}, {"aug": rdm["aug"]})  # needs both settings


def test_lrs_weighs_ior_against_hlr():
    assert hlr(0.95, 0.70) == pytest.approx(0.25)
    assert lrs(0.2, 0.25) == pytest.approx((math.exp(0.5 * 0.2 - 0.5 * 0.25) - math.exp(-1)) / (math.e - math.exp(-1)))


# --------------------------------------------------------------- cross-architecture eval

@pytest.fixture(scope="module")
def random_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "random.safetensors"
    assert main(["baseline", "--dataset", "digits", "--ipc", "1", "--seed", "0", "--out", str(path)]) == 0
    return path


TINY_EVAL = ["--models", "1", "--steps", "20", "--test-limit", "100"]


def test_eval_over_architectures_with_a_random_comparison(random_file, tmp_path, capsys):
    out_json = tmp_path / "e.json"
    code, out, err = run(["eval", random_file, "--arch", "conv,conv_bn", "--compare", "random", *TINY_EVAL,
                          "--json", out_json], capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert list(report["archs"]) == ["conv", "conv_bn"] and "no_aug" not in report
    for arch in ("conv", "conv_bn"):
        assert set(report["archs"][arch]) == {"no_aug", "aug"}
        assert set(report["compare"]["random"][arch]) == {"no_aug", "aug"}
    # the file IS the random-real set of seed 0, scored with the same seeds: identical accuracies
    assert report["compare"]["random"] == report["archs"]
    conv = report["ranking"]["random"]["conv"]
    assert conv["ior"]["no_aug"]["mean"] == 0 and conv["ior"]["aug"]["mean"] == 0
    assert conv["ars"]["mean"] == pytest.approx(normalise(0.0))
    # batch norm changes the networks, so the scores differ between the two rows
    assert report["archs"]["conv"] != report["archs"]["conv_bn"]
    rows = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert rows.count("conv_bn") == 2 and "DD-Ranking against random: IOR" in out


def test_single_arch_json_keeps_its_shape_and_bad_lists_are_one_line(random_file, tmp_path, capsys):
    out_json = tmp_path / "e.json"
    assert run(["eval", random_file, "--arch", "conv_bn", "--settings", "aug", *TINY_EVAL, "--json", out_json],
               capsys)[0] == 0
    report = json.loads(out_json.read_text())
    assert set(report) == {"aug", "dataset", "ipc", "method", "iteration", "models", "arch", "width", "seed", "steps", "init",
                           "test_limit", "seconds",
                           "file"}
    assert report["arch"] == "conv_bn"
    for argv, message in ((["--arch", "conv,lenet"], "unknown architecture 'lenet'"),
                          (["--compare", "kmeans"], "unknown baseline 'kmeans'"),
                          (["--arch", "conv,conv"], "listed twice")):
        one_line_error(*run(["eval", random_file, *argv, *TINY_EVAL], capsys)[::2], message)


def test_sets_files_are_compared_with_the_same_networks_as_the_set(random_file, tmp_path, capsys):
    """``--compare random,dm.safetensors,...``: a set file scores in the table exactly what it
    scores alone with the same seeds; each is named by its method, else by its file."""
    dm, other, bigger = tmp_path / "dm.safetensors", tmp_path / "r1.safetensors", tmp_path / "r2.safetensors"
    assert run(["baseline", "--dataset", "digits", "--ipc", "1", "--method", "dm", "--steps", "2", "--out", dm],
               capsys)[0] == 0
    assert run(["baseline", "--dataset", "digits", "--ipc", "1", "--seed", "1", "--out", other], capsys)[0] == 0
    assert run(["baseline", "--dataset", "digits", "--ipc", "2", "--out", bigger], capsys)[0] == 0
    out_json, alone = tmp_path / "e.json", tmp_path / "dm.json"
    code, out, err = run(["eval", random_file, "--compare", f"random,{dm},{other}", *TINY_EVAL, "--json", out_json],
                         capsys)
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert list(report["compare"]) == ["random", "dm", "r1"] and list(report["ranking"]) == ["random", "dm", "r1"]
    assert "DD-Ranking against dm: IOR" in out
    assert run(["eval", dm, *TINY_EVAL, "--json", alone], capsys)[0] == 0
    scored_alone = json.loads(alone.read_text())
    assert report["compare"]["dm"]["conv"] == {s: scored_alone[s] for s in ("no_aug", "aug")}
    assert report["compare"]["r1"] != report["compare"]["random"]  # another seed's images
    for item, message in (("dm", "unknown baseline 'dm'"), (tmp_path / "none.safetensors", "no such set file"),
                          (bigger, "holds 20 images, ")):
        one_line_error(*run(["eval", random_file, "--compare", item, *TINY_EVAL], capsys)[::2], message)


# ------------------------------------------------------------------------------- report

@pytest.fixture
def run_dir(tmp_path, random_file):
    import shutil

    from rcig.config import load_preset

    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(random_file, d / "distilled.safetensors")
    records = [{"iter": i, "outer_loss": 2.0 - 0.1 * i, "outer_acc": 0.1 * i, "inner_lr": 1e-3, "hvp_lr": 2e-3,
                "grad_norm": {"x": 0.5 / i, "y": 0.25, "log_temp": 0.125}, "seconds": 6.0} for i in range(1, 6)]
    records.append({"iter": 5, "eval": {"aug": {"mean": 0.4321, "std": 0.0, "accs": [0.4321]}}, "eval_seconds": 30})
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = load_preset("depth_3_no_flip").replace(steps=5, width=64).to_dict()  # the digits run's preset
    environment = {"command": "rcig distill --steps 5 --set width=64", "device": "cpu", "torch": "9.9",
                   "rcig": "0.0.7", "python": "3.11.7", "threads": 2}
    (d / "run.json").write_text(json.dumps({"dataset": "digits", "ipc": 1, "seed": 0, "config": config,
                                            "environment": environment}))
    scores = lambda m, s: {"mean": m, "std": s, "accs": [m]}  # noqa: E731
    (d / "eval.json").write_text(json.dumps({
        "no_aug": scores(0.8765, 0.0123), "aug": scores(0.5, 0.0), "dataset": "digits", "ipc": 1, "models": 1,
        "arch": "conv", "steps": 20, "seconds": 90.0,
        "compare": {"random": {"conv": {"no_aug": scores(0.6111, 0.02), "aug": scores(0.4, 0.0)}}},
        "ranking": {"random": {"conv": {"ior": {"no_aug": scores(0.2654, 0.0), "aug": scores(0.1, 0.0)},
                                        "ars": scores(0.3, 0.0)}}}}))
    return d


def embedded_pngs(text):
    from PIL import Image

    chunks = text.split('src="data:image/png;base64,')[1:]
    return [Image.open(io.BytesIO(base64.b64decode(c.split('"', 1)[0]))) for c in chunks]


def test_report_headline_curves_labels_eval_and_config(run_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # a default install: no matplotlib
    code, out, _ = run(["report", run_dir], capsys)
    assert code == 0 and "report.html" in out
    text = (run_dir / "report.html").read_text()
    headline = text[text.index("Headline"):text.index("Distilled images")]  # at the top
    for expected in ("87.65 ± 1.23", "50.00 ± 0.00", "random real images, same size", "61.11 ± 2.00",
                     "+26.54 points without", "+10.00 points with", "rcig distill --steps 5 --set width=64",
                     "device cpu", "torch 9.9", "rcig 0.0.7", "for 5 steps (6.0 s per step)",
                     "scoring: 1.5 min", "digits: 10 images of 8x8 px"):
        assert expected in headline, expected
    pngs = embedded_pngs(text)
    assert len(pngs) == 2  # image grid, label heat map
    from rcig.viz import grid_image

    grid = pngs[0]
    assert np.array_equal(np.array(grid), np.array(grid_image(load(run_dir / "distilled.safetensors"))))
    assert grid.size[1] >= 10 * 8 * 8 and len(np.unique(np.array(grid.convert("L")))) > 10  # a real picture
    charts = text.split("<svg")[1:]
    assert len(charts) == 4 and all("outer step" in c for c in charts)  # every x axis labelled
    for y_label in (">loss<", ">accuracy (%)<", ">learning rate<", ">norm<"):
        assert sum(y_label in c for c in charts) == 1, y_label
    assert "outer batch (training)" in text and "test, 1 network, with aug." in text  # --eval-every's curve
    config = text[text.index("<h2>Config"):]
    assert "depth_3_no_flip" in config and "<td>width</td><td>64</td><td>128</td>" in config
    assert "<td>steps</td><td>5</td>" in config and config.count("<tr>") == 3  # only what differs
    assert "28 px" not in text and "image_size" not in text  # not the preset's 28 px description
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in text


def test_report_marks_scores_whose_networks_diverged(run_dir, capsys):
    from rcig.report import build_report

    assert "diverged" not in build_report(run_dir)
    report = json.loads((run_dir / "eval.json").read_text())
    report["no_aug"].update(accs=[0.8765, 0.1, 0.8765], diverged=[1])
    report["compare"]["random"]["conv"]["aug"].update(accs=[0.4, 0.1], diverged=[0, 1])
    (run_dir / "eval.json").write_text(json.dumps(report))
    text = build_report(run_dir)
    headline, rest = text[:text.index("Distilled images")], text[text.index("<h2>Evaluation"):]
    for part in (headline, rest):
        assert "87.65 ± 1.23 (1 of 3 diverged)" in part and "40.00 ± 0.00 (2 of 2 diverged)" in part
        assert "50.00 ± 0.00<" in part and "61.11 ± 2.00<" in part  # the others are not marked
        assert part.count("Some evaluation networks diverged") == 1


def test_report_leaves_out_scores_of_another_outer_step(run_dir):
    from rcig.io import save
    from rcig.report import build_report

    ds = load(run_dir / "distilled.safetensors")
    ds.meta["iteration"] = 5
    (run_dir / "distilled.safetensors").unlink()
    save(ds, run_dir / "distilled.safetensors")
    report = json.loads((run_dir / "eval.json").read_text())
    (run_dir / "eval.json").write_text(json.dumps({**report, "iteration": 5}))
    assert "left out" not in build_report(run_dir) and "87.65" in build_report(run_dir)
    (run_dir / "eval.json").write_text(json.dumps({**report, "iteration": 3}))  # scored before an extension
    text = build_report(run_dir)
    assert "outer step 3; the set is now at step 5, so they are left out" in text
    assert "87.65" not in text and "Not scored yet" in text


def test_svg_chart_places_points_on_labelled_axes():
    import re

    from rcig.viz import nice_ticks, svg_chart

    svg = svg_chart([("a", [(0, 1.0), (10, 3.0)]), ("b", [(5, 2.0)])], title="T", x_label="outer step",
                    y_label="loss", width=200, height=100)
    points = re.findall(r'points="([^"]+)"', svg)
    (xa0, ya0), (xa1, ya1) = [tuple(map(float, p.split(","))) for p in points[0].split()]
    (xb, yb), = [tuple(map(float, p.split(","))) for p in points[1].split()]
    assert xa0 < xb < xa1 and abs(xb - (xa0 + xa1) / 2) < 0.2  # x linear
    assert ya0 > yb > ya1 and abs(yb - (ya0 + ya1) / 2) < 0.2  # y linear, up is larger
    assert ">outer step<" in svg and ">loss<" in svg and ">T<" in svg
    log = svg_chart([("lr", [(1, 1e-3), (2, 1e-1), (3, 0.0)])], title="lr", x_label="x", y_label="y", log_y=True)
    (_, y1), (_, y2) = [tuple(map(float, p.split(","))) for p in re.findall(r'points="([^"]+)"', log)[0].split()]
    assert ">0.01<" in log and y1 > y2  # decades; the zero is left out of a log axis
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0] and nice_ticks(3, 47) == [10, 20, 30, 40]




def test_distill_from_python_writes_the_report(tmp_path):
    import rcig

    rcig.distill("digits", 1, steps=2, out=tmp_path / "r", overrides=TINY, progress=False)
    run_json = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run_json["environment"]["device"] == "cpu" and run_json["environment"]["rcig"]
    text = (tmp_path / "r" / "report.html").read_text()
    assert len(embedded_pngs(text)) == 2 and text.count("<svg") == 4 and "outer step 2" in text
    assert "Not scored yet" in text


def test_distill_command_rewrites_the_report_with_its_scores(tmp_path, capsys, monkeypatch):
    """The run writes its report before the set is scored; the command rewrites it after."""
    import rcig.cli

    scores = lambda m: {"mean": m, "std": 0.0, "accs": [m]}  # noqa: E731

    def fake_scoring(path, *, json_out, **_):
        report = {"no_aug": scores(0.8765), "aug": scores(0.5), "dataset": "digits", "ipc": 1, "models": 1,
                  "arch": "conv", "steps": 20, "seconds": 1.0}
        json_out.write_text(json.dumps(report))
        return report

    monkeypatch.setattr(rcig.cli, "evaluate_and_print", fake_scoring)
    argv = ["distill", "--steps", "2", "--eval", "--quiet", "--out", tmp_path / "r"]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={value}"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert f"rcig: report: {tmp_path / 'r' / 'report.html'}" in out
    headline = (tmp_path / "r" / "report.html").read_text().split("Distilled images")[0]
    assert "87.65 ± 0.00" in headline and "Not scored yet" not in headline


def test_run_environment_records_the_command_line_only_of_rcig(monkeypatch):
    from rcig.run.driver import run_environment

    monkeypatch.setattr(sys, "argv", ["/usr/bin/rcig", "distill", "--out", "my runs/a"])
    env = run_environment("cpu")
    assert env["command"] == "rcig distill --out 'my runs/a'" and env["device"] == "cpu" and env["torch"]
    monkeypatch.setattr(sys, "argv", ["/venv/lib/rcig/__main__.py", "eval", "x"])
    assert run_environment("cpu")["command"] == "rcig eval x"  # python -m rcig
    monkeypatch.setattr(sys, "argv", ["/venv/lib/pytest/__main__.py", "-q"])
    assert run_environment("cpu")["command"] is None  # rcig called from Python: no command line of its own
