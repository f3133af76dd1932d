"""The benchmark's report writer: tables between markers, honest "not run" cells."""

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("run")


def score(*accs):
    return {"mean": sum(accs) / len(accs), "std": 0.01, "accs": list(accs)}


def results(aug_only_10: dict) -> dict:
    return {
        "fashion_mnist": {
            "1": {"distilled": {"no_aug": score(0.7, 0.72), "aug": score(0.6, 0.58)}, "random": None,
                  "herding": None, "preset": "fast", "steps": 226, "wall_s": 5450.0},
            "10": {"distilled": aug_only_10, "random": None, "herding": None, "steps": None, "wall_s": None},
        },
        "full_train": None,
        "speed": {"ceiling": {"gray28": {"gflops_per_s": 107.0}},
                  "cases": [{"case": "gray28:1", "seconds_per_step": 20.5, "peak_rss_mb": 4096.0,
                             "gflop_per_step": 1500.0, "fraction_of_ceiling": 0.68,
                             "parts": {"inner_solve": 2.4, "direct": 14.8, "hinv": 2.0, "implicit": 0.3,
                                       "pool": 0.9}}]},
        "machine": {"cpu": "cpu", "cores": 2, "torch": "2", "threads": 2, "python": "3", "date": "today"},
    }


def report(bench, res: dict, tmp_path, args=None) -> str:
    """The results section ``write_markdown`` writes for ``res``."""
    path = tmp_path / "B.md"
    bench.write_markdown(res, path, args)
    return path.read_text()


def test_report_replaces_only_the_marked_block(bench, tmp_path):
    path = tmp_path / "B.md"
    path.write_text("# title\n\nintro\n\n<!-- results -->\nold table\n<!-- /results -->\n\nnotes stay\n")
    res = results({"aug": score(0.8)})
    res["fashion_mnist"]["1"]["dm"] = {"no_aug": score(0.65), "made": {"iterations": 120, "max_minutes": 60.0,
                                                                       "seconds": 3590.0, "cpu_seconds": 7000.0}}
    bench.write_markdown(res, path, None)
    text = path.read_text()
    assert text.startswith("# title\n\nintro\n") and text.endswith("\nnotes stay\n")
    assert "old table" not in text and text.count("<!-- results -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 10 |")]
    assert rows[0].startswith("| 1 | no aug | 71.00 ± 1.00 (2) | not run | not run | 65.00 (1) | fast | 226 | 91 min |")
    assert rows[1].startswith("| 1 | aug | 59.00 ± 1.00 (2) | not run | not run | not run | fast |")
    assert "DM (Distribution Matching, `rcig baseline --method dm`, the distillation's budget): " \
           "1 ipc 120 iterations in 60 min (117 CPU min)." in text
    assert rows[1].startswith("| 1 | aug | 59.00 ± 1.00 (2) |")
    # a setting that was not evaluated says so rather than showing a number
    assert rows[2].startswith("| 10 | no aug | not run |") and rows[3].startswith("| 10 | aug | 80.00 (1) |")
    assert "| gray28:1 | 20.5 | 2.4 | 14.8 | 2.0 | 0.3 | 0.9 | 4.0 GB | 1500 | 68% |" in text
    assert "Full training set (all images, the protocol's short training; not a ceiling): no aug not run, aug not run" in text


def test_a_failed_or_signalled_rcig_ends_the_benchmark_with_one_line_and_its_status(bench, monkeypatch, capsys):
    import subprocess

    for code, status in ((2, 2), (-15, 143)):  # an rcig error; a child ended by SIGTERM
        monkeypatch.setattr(bench.subprocess, "run", lambda command, code=code: subprocess.CompletedProcess(command, code))
        with pytest.raises(SystemExit) as stop:
            bench.rcig("baseline", "--method", "dm")
        assert stop.value.code == status
        assert f"rcig baseline ended with exit status {status}" in capsys.readouterr().err


def test_the_dm_set_gets_the_distillations_budget_and_its_piece_its_cost(bench, tmp_path, monkeypatch):
    from rcig.evaluation.baselines import baseline_set
    from rcig.io import save

    calls = []
    monkeypatch.setattr(bench, "rcig", lambda *args: calls.append(args))
    b = bench.Bench(bench.argparse.Namespace(work=str(tmp_path / "work"), redo=[], minutes=45.0, seed=3))
    path = b.set_file(10, "dm")
    assert path.name == "fashion_mnist_dm_ipc10.safetensors" and len(calls) == 1
    made = " ".join(calls[0])
    assert "--method dm" in made and "--max-minutes 45.0" in made and "--ipc 10" in made and "--seed 3" in made
    b.set_file(10, "random")
    assert "--max-minutes" not in calls[1]
    save(baseline_set("digits", 1, method="dm", seed=0, steps=1), path)
    cost = bench.dm_cost(path)
    assert cost["iterations"] == 1 and cost["max_minutes"] is None and cost["cpu_seconds"] > 0 and cost["seconds"] > 0


def test_the_scored_dm_set_is_shipped_and_a_restored_benchmark_scores_that_set_again(bench, tmp_path, monkeypatch):
    shipped = tmp_path / "distilled"
    monkeypatch.setattr(bench, "SHIPPED", shipped)
    calls = []
    monkeypatch.setattr(bench, "rcig", lambda *args: calls.append(args))
    args = bench.argparse.Namespace(work=str(tmp_path / "made"), redo=[], minutes=45.0, seed=0, ipcs=[10], preset="fast")
    made = bench.Bench(args)
    made.set_path(10, "dm").write_bytes(b"the DM set")  # as rcig baseline left it
    made.record("eval_10_dm", {"aug": score(0.8)})
    bench.ship_sets(made, made.results())
    assert (shipped / "fashion_mnist_dm_ipc10.safetensors").read_bytes() == b"the DM set"
    assert json.loads((shipped / "fashion_mnist_dm_ipc10.eval.json").read_text())["file"] == \
        "fashion_mnist_dm_ipc10.safetensors"
    assert not (shipped / "fashion_mnist_ipc10.safetensors").exists()  # no distilled set was made

    fresh = bench.Bench(bench.argparse.Namespace(**{**vars(args), "work": str(tmp_path / "fresh")}))
    assert "fashion_mnist_dm_ipc10.safetensors" in fresh.restore(json.loads(json.dumps(made.results())))
    assert fresh.set_file(10, "dm").read_bytes() == b"the DM set" and calls == []  # not made again
    other = bench.Bench(bench.argparse.Namespace(**{**vars(args), "work": str(tmp_path / "other")}))
    other.restore({"fashion_mnist": {"10": {"dm": None}}})  # no scored DM set in the report: none taken
    other.set_file(10, "dm")
    assert len(calls) == 1 and "--method dm" in " ".join(calls[0])


def test_progress_reads_steps_and_seconds_of_outer_steps_only(bench, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 0, "init": {"method": "herding", "seconds": 7.5, "cpu_seconds": 9.0}}\n'
                   '{"iter": 1, "outer_loss": 1.0, "seconds": 20.0}\n'
                   '{"iter": 1, "eval": {"aug": {"mean": 0.5}}}\n'
                   '{"iter": 2, "outer_loss": 0.9, "seconds": 22.5}\n')
    progress = bench.read_progress(log)
    assert (progress.steps, progress.wall_seconds) == (2, 50.0)  # the herding start's wall time counts
    assert math.isnan(progress.cpu_seconds) and progress.setup_cpu_seconds == 9.0  # steps without cpu_seconds
    assert bench.read_curve(log) == [{"iter": 1, "seconds": 20.0, "aug": 0.5}]
    assert bench.read_progress(tmp_path / "missing.jsonl") == (0, 0.0, 0.0, 0.0, 0.0)


def test_a_one_setting_eval_keeps_the_other_settings_cached_scores(bench, tmp_path):
    args = bench.argparse.Namespace(work=str(tmp_path), redo=[])
    b = bench.Bench(args)
    b.record("eval_1_random", {"no_aug": score(0.5), "aug": score(0.4), "models": 5})
    merged = b.keep_other_setting("eval_1_random", {"aug": score(0.45), "models": 2})
    assert merged["aug"] == score(0.45) and merged["no_aug"] == score(0.5) and merged["models"] == 2
    both = b.keep_other_setting("eval_1_random", {"no_aug": score(0.6), "aug": score(0.7)})
    assert both["no_aug"] == score(0.6)  # a setting that was run again is replaced
    assert b.keep_other_setting("eval_10_random", {"aug": score(0.7)}) == {"aug": score(0.7)}


def test_a_kept_setting_keeps_the_date_it_was_scored_and_the_report_cites_it(bench, tmp_path):
    b = bench.Bench(bench.argparse.Namespace(work=str(tmp_path), redo=[]))
    then = {"date": "2026-01-01", "machine": "old", "commit": "aaaaaaa"}
    b.record("eval_10_herding", {"aug": score(0.71), "recorded": then})
    piece = {**b.keep_other_setting("eval_10_herding", {"no_aug": score(0.69)}),
             "recorded": {"date": "2026-02-02", "machine": "new", "commit": "bbbbbbb"}}
    assert piece["aug"]["recorded"] == then and "recorded" not in piece["no_aug"]
    res = results({"aug": score(0.8)})
    res["fashion_mnist"]["10"]["herding"] = piece
    text = report(bench, res, tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| 10 |")]
    assert "| 69.00 (1) [1] |" in rows[0] and "| 71.00 (1) [2] |" in rows[1]
    assert "[1] 2026-02-02, new, commit bbbbbbb" in text and "[2] 2026-01-01, old, commit aaaaaaa" in text


def test_a_one_setting_eval_drops_the_other_setting_scored_under_another_init(bench, tmp_path):
    b = bench.Bench(bench.argparse.Namespace(work=str(tmp_path), redo=[]))
    b.record("eval_10_random", {"no_aug": score(0.71), "aug": score(0.73)})  # no init: torch's
    fresh = {"aug": score(0.7276), "init": "reference"}
    assert b.keep_other_setting("eval_10_random", fresh) == fresh
    b.record("eval_10_herding", {"no_aug": score(0.64), "init": "reference"})
    assert b.keep_other_setting("eval_10_herding", fresh) == {**fresh, "no_aug": score(0.64)}


def test_a_cached_distillation_of_another_preset_is_refused(bench, tmp_path):
    args = bench.argparse.Namespace(work=str(tmp_path), redo=[], preset="fast")
    b = bench.Bench(args)
    b.check_preset(1)  # nothing cached yet
    b.record("distill_1", {"ipc": 1, "steps": 68})  # a record that names no preset: the paper's
    with pytest.raises(SystemExit, match="used preset depth_3_no_flip, not fast"):
        b.check_preset(1)
    args.preset = "depth_3_no_flip"
    b.check_preset(1)
    assert b.run_dir(1).name == "fashion_mnist_ipc1_depth_3_no_flip"
    args.preset, args.redo = "fast", ["distill_1"]
    b.check_preset(1)  # being redone: allowed


def test_redoing_a_distillation_redoes_its_eval(bench, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(bench.Bench, "run_piece", lambda self, name, fn: seen.append((name, list(self.args.redo))))
    bench.main(["--ipcs", "1", "10", "--only", "distill", "eval", "--methods", "distilled", "--redo", "distill_10",
                "--work", str(tmp_path)])
    assert [name for name, _ in seen] == ["distill_1", "eval_1_distilled", "distill_10", "eval_10_distilled"]
    assert set(seen[0][1]) == {"distill_10", "eval_10_distilled"}


def test_report_shows_the_solver_comparison_when_it_was_run(bench, tmp_path):
    res = results({"aug": score(0.8)})
    res["solvers"] = {"summary": [{"ipc": 1, "solver": "cg", "iterations": 5, "networks": 2, "delta_err": 7.1e-05,
                                   "v_err": 0.2, "cos_x": 0.99914, "cos_y": 0.999976}]}
    assert "| 1 | cg | 5 | 7.1e-05 | 0.2 | 0.9991 | 0.99998 | 2 |" in report(bench, res, tmp_path)


def test_speed_cases_name_a_shape_an_ipc_and_a_valid_config_variant(bench):
    import speed  # benchmarks/ is on sys.path inside the bench fixture
    from rcig.config import load_preset

    for _, _, preset in speed.SHAPES.values():
        for overrides in speed.VARIANTS.values():
            load_preset(preset).replace(**overrides)  # validated: raises on a bad variant
    for bad in ("gray28", "gray28:0", "gray28:10:nope", "rgb64:1", "gray28:1:cg5:x"):
        with pytest.raises(SystemExit) as stop:
            speed.main(["--cases", bad])
        assert stop.value.code == 2


def test_more_networks_continues_the_seeds_and_pools_the_scores(bench, tmp_path, monkeypatch):
    calls = []

    def fake_rcig(*args):  # stands in for `rcig eval`: network `seed` scores 0.5 + seed / 100
        calls.append(args)
        seed, models = int(args[args.index("--seed") + 1]), int(args[args.index("--models") + 1])
        accs = [0.5 + (seed + i) / 100 for i in range(models)]
        out = {"aug": {"mean": sum(accs) / len(accs), "std": 0.0, "accs": accs}, "models": models}
        json_out = Path(args[args.index("--json") + 1])
        assert not json_out.exists(), "rcig eval refuses to replace its --json"
        json_out.write_text(bench.json.dumps(out))

    monkeypatch.setattr(bench, "rcig", fake_rcig)
    (tmp_path / "fashion_mnist_random_ipc10.safetensors").write_bytes(b"")
    args = bench.argparse.Namespace(work=str(tmp_path), redo=[], models=1, settings="aug", more_networks=True, seed=0)
    b = bench.Bench(args)
    b.record("eval_10_random", {"no_aug": score(0.9), "aug": score(0.5), "models": 1})
    merged = b.evaluate(10, "random")
    assert calls[-1][calls[-1].index("--seed") + 1] == "1"  # network 0 is cached: train network 1
    assert merged["aug"]["accs"] == [0.5, 0.51] and merged["models"] == 2
    assert merged["aug"]["mean"] == pytest.approx(0.505) and merged["aug"]["std"] == pytest.approx(0.005)
    assert merged["no_aug"] == score(0.9)  # the other setting is kept
    b.record("eval_10_random", merged)
    assert b.evaluate(10, "random")["aug"]["accs"] == [0.5, 0.51, 0.52]
    args.settings = "both"  # 1 no-aug network vs 2 aug ones: no common next seed
    b.record("eval_10_random", {**merged, "aug": score(0.5, 0.51)})
    with pytest.raises(SystemExit, match="same number of cached networks"):
        b.evaluate(10, "random")


def test_gpu_check_runs_tiny_on_the_cpu():
    """benchmarks/gpu_check.py is for CUDA machines; its CPU run keeps it working."""
    import os
    import subprocess

    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--dataset", "digits",
                           "--ipcs", "1", "--steps", "2", "--models", "1", "--eval-steps", "20", "--tiny",
                           "--no-tests"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCH.parent / "src")})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    row = next(line for line in lines if line.startswith("| digits:1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and cells[2] == "-"  # s/step measured; no CPU reference for digits
    assert 0 <= float(cells[4]) <= 100 and 0 <= float(cells[5]) <= 100
    assert "device tests: not run" in done.stdout


def test_aug_fragility_scores_each_case_of_the_augmentation_setting(benchmark_script, tmp_path, capsys):
    """One-hot labels on a random-real set (already one-hot) score exactly the protocol; one
    transform alone is another run; an unknown case is a one-line error."""
    from rcig.evaluation.baselines import baseline_set
    from rcig.io import save

    fragility = benchmark_script("aug_fragility")
    path = tmp_path / "random.safetensors"
    save(baseline_set("digits", 1, method="random", seed=0), path)
    scores = fragility.main([str(path), "--cases", "protocol,onehot,crop,steps=7", "--steps", "20",
                             "--test-limit", "200", "--json", str(tmp_path / "f.json")])
    assert list(scores) == ["protocol", "onehot", "crop", "steps=7"] and all(0 <= s <= 1 for s in scores.values())
    assert scores["onehot"] == scores["protocol"]
    assert json.loads((tmp_path / "f.json").read_text())["scores"] == scores
    with pytest.raises(SystemExit) as stop:
        fragility.main([str(path), "--cases", "protocol,zoom"])
    assert stop.value.code == 2 and "unknown case 'zoom'" in capsys.readouterr().err


def test_an_adopted_run_gives_the_steps_cost_curve_set_and_eval_and_another_config_is_refused(bench, tmp_path):
    from rcig.config import load_preset

    run = tmp_path / "run"
    run.mkdir()
    config = {**load_preset("fast", image_size=28, channels=1).to_dict(), "init": "herding", "steps": 5000,
              "description": "a variant's run", "chunk_rows": None}  # auto is herding at 1 ipc; the step count
    # and the chunks the run took (chunk_rows "auto" recorded as taken) do not matter
    (run / "run.json").write_text(json.dumps({"dataset": "fashion_mnist", "ipc": 1, "seed": 0, "config": config}))
    (run / "log.jsonl").write_text('{"iter": 0, "init": {"method": "herding", "seconds": 180.0, "cpu_seconds": 170.0}}\n'
                                   '{"iter": 1, "outer_loss": 1.0, "seconds": 10.0, "cpu_seconds": 9.0}\n'
                                   '{"iter": 1, "eval": {"aug": {"mean": 0.7}}}\n'
                                   '{"iter": 2, "outer_loss": 0.9, "seconds": 20.0, "cpu_seconds": 19.0}\n')
    (run / "distilled.safetensors").write_bytes(b"set")
    (run / "distilled.eval.json").write_text(json.dumps({"no_aug": score(0.76), "aug": score(0.74), "init": "reference"}))
    args = bench.argparse.Namespace(work=str(tmp_path / "work"), redo=[], preset="fast", ipcs=[1], seed=0)
    b = bench.Bench(args)
    b.adopt(1, run)
    piece = b.done("distill_1")
    assert (piece["steps"], piece["wall_s"], piece["cpu_s"]) == (2, 210.0, 198.0)
    assert piece["curve"] == [{"iter": 1, "seconds": 10.0, "aug": 0.7}] and piece["adopted"]
    assert b.set_file(1, "distilled") == run.resolve() / "distilled.safetensors"
    assert b.done("eval_1_distilled")["aug"] == score(0.74)
    b.check_preset(1)  # the adopted piece is this preset's
    res = b.results()
    res["fashion_mnist"]["1"]["random"] = {"no_aug": score(0.49), "aug": score(0.5)}  # no init: torch's
    text = report(bench, res, tmp_path, args)
    assert "| 1 | no aug | 76.00 (1) [1] | 49.00 (1) | not run | not run | fast | 2 | 4 min (3 CPU min) [1] |" in text
    assert "Distillations at 1 ipc: runs made outside this script and adopted (--adopt)" in text
    assert "torch's initialisation of the protocol's networks (the others with the reference's): random at 1 ipc." in text
    stamp = bench.provenance()
    assert piece["recorded"] == stamp and b.done("eval_1_distilled")["recorded"] == stamp  # adopted today, here

    (run / "run.json").write_text(json.dumps({"dataset": "fashion_mnist", "ipc": 1, "seed": 0,
                                              "config": {**config, "target_batch_size": 64, "init": "real"}}))
    with pytest.raises(SystemExit, match=r"not the fast preset's run \(init: 'real' vs 'herding', "
                                         r"target_batch_size: 64 vs 256\)"):
        b.adopt(1, run)
    with pytest.raises(SystemExit, match="distilled fashion_mnist at 1 ipc, not fashion_mnist at 10"):
        b.adopt(10, run)
    (run / "log.jsonl").unlink()
    with pytest.raises(SystemExit, match="no log.jsonl there"):
        b.adopt(1, run)
    for bad in ("1", "x=run", "1="):
        with pytest.raises(SystemExit):
            bench.main(["--adopt", bad, "--only", "report", "--work", str(tmp_path / "w")])


def test_a_run_of_another_seed_is_reported_beside_the_tables_set_with_the_seeds_mean(bench, tmp_path):
    from rcig.config import load_preset

    config = load_preset("fast", image_size=28, channels=1).to_dict()
    args = bench.argparse.Namespace(work=str(tmp_path / "work"), redo=[], preset="fast", ipcs=[1], seed=0)
    b = bench.Bench(args)
    for seed, accs in ((0, (0.76, 0.78)), (1, (0.79, 0.79))):
        run = tmp_path / f"run{seed}"
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"dataset": "fashion_mnist", "ipc": 1, "seed": seed, "config": config}))
        (run / "log.jsonl").write_text('{"iter": 1, "outer_loss": 1.0, "seconds": 60.0}\n'
                                       f'{{"iter": {40 + seed}, "outer_loss": 0.9, "seconds": 120.0}}\n')
        (run / "distilled.safetensors").write_bytes(b"set")
        if seed == 1:  # a further seed is reported by its scores: none yet, refused
            with pytest.raises(SystemExit, match="a run of seed 1 .* has no distilled.eval.json"):
                b.adopt(1, run)
        (run / "distilled.eval.json").write_text(json.dumps({"no_aug": score(*accs), "aug": score(0.7)}))
        b.adopt(1, run)
    assert b.done("distill_1")["seed"] == 0 and b.done("seed_1_1")["steps"] == 41
    assert b.done("eval_1_distilled")["no_aug"] == score(0.76, 0.78)  # the seed-0 run's set stays the table's
    res = b.results()
    assert list(res["fashion_mnist"]["1"]["seeds"]) == ["1"]
    text = report(bench, res, tmp_path, args)
    assert "| 1 | 0 (the table's set) | 77.00 ± 1.00 (2) | 70.00 (1) | 40 | 3 min [1] |" in text
    assert "| 1 | 1 | 79.00 ± 1.00 (2) | 70.00 (1) | 41 | 3 min [1] |" in text
    assert "| 1 | the seeds' means | 78.00 (seeds 2.00 apart) | 70.00 (seeds 0.00 apart) | | |" in text
    readme = tmp_path / "R.md"
    readme.write_text("<!-- results -->\n<!-- /results -->\n")
    bench.write_readme(res, readme)
    text = readme.read_text()
    assert "| 1 | `fast`, seed 0, 40 steps, 3 min |" in text
    assert "Other seeds at 1 ipc, the same preset and budget: seed 1, 41 steps: 79.0 ± 1.0 / 70.0 (2 / 1 networks)" \
        not in text  # counts differ per setting: each setting says its own
    assert "seed 1, 41 steps: 79.0 ± 1.0 (2) / 70.0 (1); the seeds' means 78.00 (seeds 2.00 apart) / " \
           "70.00 (seeds 0.00 apart)." in text
    fresh = bench.Bench(bench.argparse.Namespace(**{**vars(args), "work": str(tmp_path / "again")}))
    assert "seed_1_1" in fresh.restore(json.loads(json.dumps(res)))
    assert fresh.results()["fashion_mnist"] == res["fashion_mnist"]


def test_restore_rebuilds_the_pieces_a_report_came_from_and_keeps_cached_ones(bench, tmp_path):
    args = bench.argparse.Namespace(work=str(tmp_path / "a"), redo=[], preset="fast", ipcs=[1, 10], seed=0)
    measured = bench.Bench(args)
    measured.record("eval_1_distilled", {"no_aug": score(0.76), "aug": score(0.74), "init": "reference"})
    measured.record("eval_10_random", {"no_aug": score(0.71)})
    measured.record("eval_1_random", {"no_aug": score(0.5)})
    measured.record("distill_1", {"ipc": 1, "preset": "fast", "steps": 871, "wall_s": 7536.8, "cpu_s": 7205.4,
                                  "budget_minutes": None, "run_dir": "/gone/run1", "adopted": True,
                                  "curve": [{"iter": 54, "seconds": 444.2, "aug": 0.72}]})
    measured.record("distill_10", {"ipc": 10, "preset": "fast", "steps": 100, "wall_s": 60.0, "cpu_s": 50.0,
                                   "budget_minutes": 1.0, "run_dir": str(measured.own_run_dir(10)), "curve": []})
    measured.record("full_train", {"aug": score(0.85)})
    report = measured.results()

    fresh = bench.Bench(bench.argparse.Namespace(**{**vars(args), "work": str(tmp_path / "b")}))
    fresh.record("eval_1_random", {"no_aug": score(0.49)})  # cached here: kept, not overwritten by the record's
    written = fresh.restore(json.loads(json.dumps(report)))
    assert set(written) == {"distill_1", "distill_10", "eval_1_distilled", "eval_10_random", "full_train"}
    again = fresh.results()
    assert again["fashion_mnist"]["1"]["random"] == {"no_aug": score(0.49)}
    again["fashion_mnist"]["1"]["random"] = report["fashion_mnist"]["1"]["random"]
    assert again["fashion_mnist"] == report["fashion_mnist"]  # steps, cost, curve, adoption and scores
    assert again["full_train"] == report["full_train"]
    assert fresh.run_dir(1) == Path("/gone/run1") and fresh.run_dir(10) == fresh.own_run_dir(10)
    assert fresh.restore(report) == []  # nothing missing any more
    with pytest.raises(SystemExit, match="--restore .*nope.json: no such file"):
        bench.main(["--restore", str(tmp_path / "nope.json"), "--only", "report", "--work", str(tmp_path / "c")])


def test_each_figure_cites_the_date_machine_and_commit_of_its_piece(bench, tmp_path, monkeypatch):
    args = bench.argparse.Namespace(work=str(tmp_path / "w"), redo=[], preset="fast", ipcs=[1])
    b = bench.Bench(args)
    here = {"date": "2026-01-02", "machine": "cpu, 2 cores", "commit": "abc1234"}
    monkeypatch.setattr(bench, "provenance", lambda: here)
    assert b.run_piece("eval_1_random", lambda: {"no_aug": score(0.5), "aug": score(0.49)})["recorded"] == here
    older = {"date": "2025-12-31", "machine": "other, 8 cores", "commit": "0000000"}
    b.record("eval_1_distilled", {"no_aug": score(0.76), "aug": score(0.74), "recorded": older})
    res = b.results()
    text = report(bench, res, tmp_path, args)
    assert "| 1 | no aug | 76.00 (1) [1] | 50.00 (1) [2] | not run |" in text  # cited in order of appearance
    assert "* [1] 2025-12-31, other, 8 cores, commit 0000000\n* [2] 2026-01-02, cpu, 2 cores, commit abc1234\n" in text
    stamp = bench.Sources()  # one mark per stamp, however many figures share it
    assert [stamp.cite(res["fashion_mnist"]["1"]["random"]) for _ in range(2)] == [" [1]", " [1]"]
    assert stamp.cite(None) == "" and stamp.legend() == ["[1] 2026-01-02, cpu, 2 cores, commit abc1234"]


def test_the_readme_table_is_written_from_the_results(bench, tmp_path):
    """Each ipc with a scored set: how it was made, RCIG and the baselines as "no aug / aug
    (networks)", the paper's figure; the text around the markers is kept."""
    res = {"fashion_mnist": {
        "1": {"distilled": {"no_aug": score(0.76, 0.78), "aug": score(0.74, 0.72)}, "random": {"aug": score(0.5)},
              "herding": None, "preset": "fast", "steps": 871, "wall_s": 7536.8, "cpu_s": 7205.4},
        "10": {"distilled": {"no_aug": score(0.87, 0.86, 0.88), "aug": score(0.85)}, "random": None,
               "herding": None, "preset": "fast", "steps": 1767, "wall_s": 7140.0, "cpu_s": float("nan")},
        "50": {"distilled": None}}}
    path = tmp_path / "README.md"
    path.write_text("# rcig\n\n<!-- results -->\nold\n<!-- /results -->\n\nafter\n")
    bench.write_readme(res, path)
    text = path.read_text()
    assert text.startswith("# rcig\n\n<!-- results -->\n| Fashion-MNIST, images per class |") and \
        text.endswith("<!-- /results -->\n\nafter\n") and "old" not in text
    rows = text.split("<!-- results -->\n")[1].split("\n<!-- /results -->")[0].splitlines()
    assert rows[2] == ("| 1 | `fast`, 871 steps, 126 min (120 CPU min) | 77.0 ± 1.0 / 73.0 ± 1.0 (2) | "
                       "not scored / 50.0 (1) | not scored | 79.8 |")
    assert rows[3] == "| 10 | `fast`, 1767 steps, 119 min | 87.0 ± 1.0 (3) / 85.0 (1) | not scored | not scored | 88.5 |"
    assert len(rows) == 4  # no set scored at 50 ipc: no row
    res["fashion_mnist"]["1"]["dm"] = {"no_aug": score(0.6), "aug": score(0.62)}
    bench.write_readme(res, path)
    assert "| random real | herding | DM | paper (GPU) |" in path.read_text() and "| 60.0 / 62.0 (1) | 79.8 |" in \
        path.read_text()


def test_the_report_draws_each_methods_scores_and_a_curve_only_for_runs_scored_along_the_way(bench, tmp_path):
    res = results({"aug": score(0.8)})
    res["fashion_mnist"]["1"]["dm"] = {"no_aug": score(0.65)}
    assert bench.plot_methods(res, tmp_path / "methods.png") and (tmp_path / "methods.png").stat().st_size > 0
    assert not bench.plot_curves(res, tmp_path / "curves.png") and not (tmp_path / "curves.png").exists()
    res["fashion_mnist"]["1"]["curve"] = [{"iter": 100, "aug": 0.5}]
    assert bench.plot_curves(res, tmp_path / "curves.png")
    nothing = {"fashion_mnist": {"1": {m: None for m in bench.METHODS}}}
    assert not bench.plot_methods(nothing, tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    path = tmp_path / "B.md"
    path.write_text("<!-- results -->\n<!-- /results -->\n")
    bench.write_markdown(res, path, None, [("methods.png", "scores")])
    assert "![scores](benchmarks/methods.png)\n<!-- /results -->" in path.read_text()
