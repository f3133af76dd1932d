"""DD-Ranking's scores against hand-computed values, cross-architecture eval in one call, and
the run report (with and without matplotlib)."""

import base64
import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from rcig.cli import main
from rcig.evaluation.ranking import ars, hlr, lrs, normalise, ranking_scores
from rcig.io import load


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


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
    assert set(report) == {"aug", "dataset", "ipc", "method", "models", "arch", "steps", "init", "test_limit", "seconds",
                           "file"}
    assert report["arch"] == "conv_bn"
    for argv, message in ((["--arch", "conv,lenet"], "unknown architecture 'lenet'"),
                          (["--compare", "kmeans"], "unknown baseline 'kmeans'"),
                          (["--arch", "conv,conv"], "listed twice")):
        code, _, err = run(["eval", random_file, *argv, *TINY_EVAL], capsys)
        assert code == 2 and message in err and err.count("\n") == 1


# ------------------------------------------------------------------------------- report

@pytest.fixture
def run_dir(tmp_path, random_file):
    import shutil

    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(random_file, d / "distilled.safetensors")
    records = [{"iter": i, "outer_loss": 2.0 - 0.1 * i, "outer_acc": 0.1 * i, "inner_lr": 1e-3, "hvp_lr": 2e-3,
                "grad_norm": {"x": 0.5 / i, "y": 0.25, "log_temp": 0.125}} for i in range(1, 6)]
    records.append({"iter": 5, "eval": {"aug": {"mean": 0.4321, "std": 0.0, "accs": [0.4321]}}})
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "run.json").write_text(json.dumps({"dataset": "digits", "ipc": 1, "seed": 0, "config": {"depth": 3,
                                                                                                  "marker_key": 7}}))
    (d / "eval.json").write_text(json.dumps({"no_aug": {"mean": 0.8765, "std": 0.0123, "accs": [0.8765]},
                                             "aug": {"mean": 0.5, "std": 0.0, "accs": [0.5]}, "dataset": "digits",
                                             "ipc": 1, "models": 1, "arch": "conv", "steps": 20}))
    return d


def embedded_pngs(text):
    from PIL import Image

    chunks = text.split('src="data:image/png;base64,')[1:]
    return [Image.open(io.BytesIO(base64.b64decode(c.split('"', 1)[0]))) for c in chunks]


def test_report_embeds_images_curves_eval_and_config(run_dir, capsys):
    code, out, _ = run(["report", run_dir], capsys)
    assert code == 0 and "report.html" in out
    text = (run_dir / "report.html").read_text()
    pngs = embedded_pngs(text)
    assert len(pngs) == 3  # image grid, label heat map, curves
    from rcig.viz import grid_image

    grid = pngs[0]
    assert np.array_equal(np.array(grid), np.array(grid_image(load(run_dir / "distilled.safetensors"))))
    assert grid.size[1] >= 10 * 8 * 8 and len(np.unique(np.array(grid.convert("L")))) > 10  # a real picture
    assert "87.65 ± 1.23" in text and "50.00 ± 0.00" in text  # eval table, in %
    assert "marker_key" in text  # the run's config
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained


def test_report_without_matplotlib_falls_back_to_tables(run_dir, monkeypatch):
    from rcig.report import build_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    text = build_report(run_dir)
    assert len(embedded_pngs(text)) == 1  # the image grid needs only Pillow
    assert "matplotlib is not installed" in text
    assert "<td>outer_loss</td><td>5</td><td>1.9</td><td>1.5</td><td>1.9</td><td>1.5 (iter 5)</td>" in text
    assert "<td>eval/aug</td><td>1</td>" in text
    assert "<th>image</th><th>class</th>" in text and "+0.900" in text  # the labels as numbers


def test_distill_writes_the_report(tmp_path, capsys):
    tiny = ["width=8", "pool_size=3", "target_batch_size=128", "max_online_steps=6", "inner_lr=3e-3", "hvp_lr=3e-3"]
    argv = ["distill", "--steps", "2", "--no-eval", "--quiet", "--out", tmp_path / "r"]
    for item in tiny:
        argv += ["--set", item]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    text = (tmp_path / "r" / "report.html").read_text()
    assert len(embedded_pngs(text)) == 3 and "<h2>Curves</h2><img" in text and "iteration 2" in text
