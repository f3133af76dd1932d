"""benchmarks/variants.py: variant names, CPU budgets, resume after a kill, the report."""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def variants(benchmark_script):
    return benchmark_script("variants")


def argv(tmp_path, *more):
    return ["--dataset", "digits", "--work", str(tmp_path / "work"), "--json", str(tmp_path / "v.json"),
            "--png", str(tmp_path / "v.png"), "--markdown", str(tmp_path / "B.md"), *more]


def value(args, flag):
    return args[args.index(flag) + 1]


class FakeRcig:
    """Stands in for the ``rcig`` command line. ``distill`` appends log records as the real
    one does (a tuning record of ``tuning`` CPU seconds unless cg, then ``per_step`` CPU
    seconds per step) and writes the "set" as text naming its step; ``eval`` scores a set
    ``0.5 + step / 100``. ``fail_eval_at``: the eval of that step dies (a killed sweep)."""

    def __init__(self, tuning=5.0, per_step=2.0, fail_eval_at=None, distill_error=None):
        self.tuning, self.per_step, self.fail_eval_at = tuning, per_step, fail_eval_at
        self.distill_error = distill_error  # every distill stops with this rcig: error
        self.calls = []

    def __call__(self, command, *args, threads=1):
        self.calls.append((command, *args))
        if command == "distill":
            self.distill(args)
        elif command == "baseline":  # a baseline set scores as a set of step 0
            Path(value(args, "--out")).write_text("0")
        else:
            self.eval(args)

    def distill(self, args):
        if self.distill_error:
            raise self.variants.DistillFailed(f"rcig: error: {self.distill_error}")
        out, steps = Path(value(args, "--out")), int(value(args, "--steps"))
        log = out / "log.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()] if "--resume" in args else []
        if not records and "solver=\"cg\"" not in " ".join(args):
            records.append({"iter": 0, "tuning": {"cpu_seconds": self.tuning, "seconds": 2 * self.tuning}})
        done = max((r["iter"] for r in records), default=0)
        records += [{"iter": i, "outer_loss": 1.0, "cpu_seconds": self.per_step, "seconds": 2 * self.per_step}
                    for i in range(done + 1, steps + 1)]
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "latest.pt").write_text(str(steps))
        log.write_text("".join(json.dumps(r) + "\n" for r in records))
        (out / "distilled.safetensors").write_text(str(steps))

    def eval(self, args):
        step = int(Path(args[0]).read_text())
        if step == self.fail_eval_at:
            raise subprocess.CalledProcessError(-9, "rcig eval")
        score = {"mean": 0.5 + step / 100, "std": 0.0, "accs": [0.5 + step / 100]}
        settings = ("no_aug", "aug") if value(args, "--settings") == "both" else (value(args, "--settings"),)
        Path(value(args, "--json")).write_text(json.dumps({s: score for s in settings}))

    def runs(self, command):
        return [c for c in self.calls if c[0] == command]


def test_variant_names_points_and_overrides_are_validated(variants, tmp_path, capsys):
    from rcig.config import load_preset

    for overrides in variants.variant_overrides(100).values():
        load_preset(variants.PRESET).replace(**overrides)  # raises on a bad field or value
    assert list(variants.variant_overrides(7)) == list(variants.ORDER)
    assert variants.variant_overrides(7)["lr10x"] == {"proto_lr_boost": 10, "proto_lr_boost_steps": 7}
    # --preset fast at 1 ipc is fast_w64 scored at the paper's width; fast_herding_lr3x is it at width 128
    fast = load_preset("fast", 28, 1).to_dict()
    w64 = load_preset(variants.PRESET).replace(**variants.variant_overrides(7)["fast_w64"]).to_dict()
    assert {k for k in fast if fast[k] != w64[k]} == {"description", "init", "test_width"}
    assert (fast["init"], w64["init"], fast["test_width"]) == ("auto", "herding", 128)  # auto = herding at 1 ipc
    variant = load_preset(variants.PRESET).replace(**variants.variant_overrides(7)["fast_herding_lr3x"]).to_dict()
    assert {k for k in w64 if w64[k] != variant[k]} == {"width"}
    for name, field, value in (("fast_boost900", "proto_lr_boost_steps", 900), ("fast_lr10x", "proto_lr_boost", 10)):
        changed = load_preset(variants.PRESET).replace(**variants.variant_overrides(7)[name]).to_dict()
        assert {k for k in changed if changed[k] != variant[k]} == {field} and changed[field] == value
    # fast_anneal: fast at 1 ipc annealing to 0.1x at the fixed step --anneal-step, not at the run's steps
    annealed = load_preset(variants.PRESET).replace(**variants.variant_overrides(7, 500)["fast_anneal"]).to_dict()
    assert {k: annealed[k] for k in annealed if annealed[k] != variant[k]} == \
        {"proto_lr_final": 0.1, "proto_lr_final_step": 500}
    assert variants.variant_overrides(7)["fast_anneal"]["proto_lr_final_step"] == variants.ANNEAL_STEP
    assert variants.parse_variants("cg5, faithful") == ["faithful", "cg5"]  # run in ORDER's order
    # the report's "change": the closest base and what the variant sets otherwise, a base's value changed too
    table = variants.variant_overrides(7)
    assert variants.change(table["fast_w32_tb1024"]) == "fast_herding_lr3x + target_batch_size=1024, width=32"
    assert variants.change(table["fast_w64"]) == "fast"  # --preset fast: its variants read as its --set
    assert variants.change(table["fast_w64_l2x4"]) == "fast + l2_rate=0.002"
    assert variants.change(table["tb256"]) == "faithful + target_batch_size=256"
    assert variants.change(table["tb256_cg5"]) == "tb256_cg5"
    assert variants.parse_baselines("herding,random") == ["random", "herding"] and variants.parse_baselines("none") == []
    for bad in (["--variants", "faithful,lr5x"], ["--points", "5,x"], ["--points", "0,5"], ["--chunk", "0"],
                ["--baselines", "kmeans"], ["--anneal-step", "300", "--only", "report"]):
        with pytest.raises(SystemExit) as stop:
            variants.main(argv(tmp_path, *bad))
        assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "known: faithful, tb256, cg5" in err and "--anneal-step must be above fast's 300 boosted steps" in err


def test_budgets_are_reached_in_cpu_time_tuning_included(variants, tmp_path, monkeypatch):
    fake = FakeRcig(tuning=5.0, per_step=2.0)
    monkeypatch.setattr(variants, "rcig", fake)
    variants.main(argv(tmp_path, "--variants", "faithful,cg5", "--points", "0.5,1", "--chunk", "4", "--only", "run"))
    faithful = json.loads((tmp_path / "work" / "faithful.json").read_text())
    # 5 s of tuning + 2 s per step: the first step past 30 s is the 13th (31 s), past 60 s the 28th (61 s)
    assert [(p["steps"], p["cpu_seconds"], p["tuning_cpu_seconds"]) for p in faithful["points"].values()] == \
        [(13, 31.0, 5.0), (28, 61.0, 5.0)]
    cg5 = json.loads((tmp_path / "work" / "cg5.json").read_text())
    assert [p["steps"] for p in cg5["points"].values()] == [15, 30]  # no tuning: 2 s per step only
    # chunks of at most --chunk steps; the first creates the run with its variant's overrides
    distills = fake.runs("distill")
    first = [c for c in distills if "--resume" not in c]
    assert len(first) == 2 and "solver=\"cg\"" in " ".join(first[1])
    assert all("--resume" in c for c in distills if c not in first)
    steps = [int(value(c, "--steps")) for c in distills if "faithful" in value(c, "--out")]
    assert all(0 < b - a <= 4 for a, b in zip(steps, steps[1:]))
    assert faithful["points"]["0.5"]["aug"]["mean"] == pytest.approx(0.63)  # the set of step 13 was scored


def test_a_killed_sweep_goes_on_without_redoing_scored_points(variants, tmp_path, monkeypatch):
    fake = FakeRcig(fail_eval_at=28)
    monkeypatch.setattr(variants, "rcig", fake)
    args = argv(tmp_path, "--variants", "faithful", "--points", "0.5,1", "--only", "run")
    with pytest.raises(subprocess.CalledProcessError):
        variants.main(args)
    piece = json.loads((tmp_path / "work" / "faithful.json").read_text())
    assert "aug" in piece["points"]["0.5"] and "aug" not in piece["points"]["1"]
    fake.fail_eval_at, fake.calls = None, []
    variants.main(args)
    # the snapshot of step 28 is scored; nothing is distilled again and step 13 is not re-scored
    assert fake.runs("distill") == [] and [Path(c[1]).name for c in fake.runs("eval")] == \
        ["1min.safetensors", "baseline_random.safetensors", "baseline_herding.safetensors"]  # baselines: after
    piece = json.loads((tmp_path / "work" / "faithful.json").read_text())
    assert piece["points"]["1"]["aug"]["mean"] == pytest.approx(0.78) and "running" not in piece
    fake.calls = []
    variants.main(args + ["--points", "0.5,1,1.5"])  # a larger budget: the run resumes from step 28
    assert int(value(fake.runs("distill")[0], "--steps")) > 28 and "--resume" in fake.runs("distill")[0]
    assert not fake.runs("baseline") and all("baseline" not in c[1] for c in fake.runs("eval"))  # scored once
    # a budget one step already passed is that step's point (tuning 5 s > 3 s): scored once
    fake.calls = []
    variants.main(argv(tmp_path, "--variants", "tb256", "--points", "0.05,0.1", "--only", "run"))
    tb = json.loads((tmp_path / "work" / "tb256.json").read_text())
    assert tb["points"]["0.05"]["steps"] == tb["points"]["0.1"]["steps"] == 1 and len(fake.runs("eval")) == 1
    # killed after the distillation, before its snapshot: the run, past the budget, is snapshotted then
    real_copy, fake.calls = variants.copy_atomic, []
    monkeypatch.setattr(variants, "copy_atomic", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        variants.main(argv(tmp_path, "--variants", "tb512", "--points", "0.5", "--only", "run"))
    monkeypatch.setattr(variants, "copy_atomic", real_copy)
    distilled = len(fake.runs("distill"))
    variants.main(argv(tmp_path, "--variants", "tb512", "--points", "0.5", "--only", "run"))
    tb = json.loads((tmp_path / "work" / "tb512.json").read_text())
    assert len(fake.runs("distill")) == distilled and tb["points"]["0.5"]["steps"] == 13
    with pytest.raises(SystemExit) as stop:  # a cache made with other overrides is refused
        variants.main(argv(tmp_path, "--variants", "tb256", "--points", "0.1", "--set", "width=8"))
    assert stop.value.code == 2


def test_a_diverged_variant_is_recorded_and_another_error_stops_the_sweep(variants, tmp_path, monkeypatch, capsys):
    fake = FakeRcig(distill_error="/w/faithful is in use by another rcig process (pid 7)")
    fake.variants = variants
    monkeypatch.setattr(variants, "rcig", fake)
    args = argv(tmp_path, "--variants", "faithful", "--points", "0.5", "--only", "run")
    with pytest.raises(SystemExit) as stop:
        variants.main(args)
    assert stop.value.code == 2 and "in use by another rcig process" in capsys.readouterr().err
    assert "error" not in json.loads((tmp_path / "work" / "faithful.json").read_text())  # not the variant's fault
    fake.distill_error = None
    variants.main(args)  # run again once mended: it is measured
    assert "0.5" in json.loads((tmp_path / "work" / "faithful.json").read_text())["points"]
    fake.distill_error = "diverged at iteration 3: the outer loss is not finite"
    variants.main(argv(tmp_path, "--variants", "lr10x", "--points", "0.5", "--only", "run"))
    assert json.loads((tmp_path / "work" / "lr10x.json").read_text())["error"].endswith("the outer loss is not finite")
    fake.calls = []
    variants.main(argv(tmp_path, "--variants", "lr10x", "--points", "0.5", "--only", "run"))
    assert fake.runs("distill") == []  # a diverged variant is skipped from then on


def test_report_json_table_and_figure(variants, tmp_path, monkeypatch):
    FakeRcig.last = FakeRcig()
    monkeypatch.setattr(variants, "rcig", FakeRcig.last)
    variants.main(argv(tmp_path, "--variants", "faithful,lr3x", "--points", "0.5,1", "--only", "run"))
    (tmp_path / "work" / "lr10x.json").write_text(json.dumps(
        {"variant": "lr10x", "points": {}, "error": "rcig: error: diverged at iteration 3"}))
    (tmp_path / "B.md").write_text("# Benchmarks\n\nintro\n")
    results = variants.main(argv(tmp_path, "--only", "report"))
    assert list(results["variants"]) == ["faithful", "lr3x", "lr10x"]
    assert json.loads((tmp_path / "v.json").read_text()) == results
    assert (tmp_path / "v.png").stat().st_size > 10_000
    text = (tmp_path / "B.md").read_text()
    start, end = "<!-- variants -->", "<!-- /variants -->"
    assert text.startswith("# Benchmarks\n\nintro\n\n## variants\n\n" + start)
    rows = text.split(start)[1].split(end)[0].strip().splitlines()
    assert rows[0] == "| variant | change | 0.5 CPU min | 1 CPU min | s/step (CPU) | tuning, init (CPU s) |"
    assert rows[2] == "| **faithful** | faithful | 63.0 / 63.0 (13) | 78.0 / 78.0 (28) | 2.0 | 5 |"
    assert rows[3].startswith("| lr3x | faithful + proto_lr_boost=3, proto_lr_boost_steps=100 | ")
    assert rows[4].startswith("| lr10x | faithful | - | - | failed: rcig: error: diverged")
    variants.main(argv(tmp_path, "--only", "report"))  # rewritten in place, not appended
    assert (tmp_path / "B.md").read_text() == text
    # the baselines: made once with the sweep's dataset, ipc and seed, rows under the variants
    assert rows[5] == "| *random real* (baseline) | - | 50.0 / 50.0 | 50.0 / 50.0 | - | - |"
    assert rows[6].startswith("| *herding* (baseline) |")
    assert results["baselines"]["herding"]["aug"]["mean"] == 0.5
    made = [c for c in FakeRcig.last.calls if c[0] == "baseline"]
    assert [value(c, "--method") for c in made] == ["random", "herding"] and value(made[0], "--ipc") == "1"
    assert "(1 protocol network(s) each)" in text


def test_a_second_screen_reports_in_its_own_section(variants, tmp_path, monkeypatch):
    """``--section``: another sweep (other variants, networks, settings) beside the first, each
    row saying what it changes on top of the preset it starts from."""
    monkeypatch.setattr(variants, "rcig", FakeRcig())
    (tmp_path / "B.md").write_text("# Benchmarks\n\n<!-- variants -->\nfirst\n<!-- /variants -->\n")
    variants.main(argv(tmp_path, "--variants", "fast_herding_lr3x,fast_w64", "--points", "0.5", "--models", "2",
                       "--settings", "no_aug", "--baselines", "none", "--section", "levers", "--anneal-step", "450"))
    piece = json.loads((tmp_path / "work" / "fast_w64.json").read_text())
    piece["points"]["0.5"]["no_aug"]["accs"] *= 2  # the fake eval scores one network; the report counts them
    (tmp_path / "work" / "fast_w64.json").write_text(json.dumps(piece))
    results = variants.main(argv(tmp_path, "--section", "levers", "--only", "report"))
    text = (tmp_path / "B.md").read_text()
    assert text.startswith("# Benchmarks\n\n<!-- variants -->\nfirst\n<!-- /variants -->\n\n## levers\n")
    rows = text.split("<!-- levers -->")[1].split("<!-- /levers -->")[0].strip().splitlines()
    assert [r.split(" | ")[:2] for r in rows[2:4]] == [["| fast_herding_lr3x", "fast_herding_lr3x"],
                                                        ["| fast_w64", "fast"]]  # the preset itself
    assert rows[2].split(" | ")[2].endswith("/ - (15)") and results["models"] == "1-2"
    with pytest.raises(SystemExit):
        variants.main(argv(tmp_path, "--section", "no such", "--only", "report"))


def test_a_real_tiny_distillation_hits_its_budget(variants, tmp_path, monkeypatch):
    """The real ``rcig distill`` (digits, toy sizes, fixed rates: no tuning) under a fake eval."""
    real, evals = variants.rcig, []

    def rcig(command, *args, threads=1):
        if command == "distill":
            return real(command, *args, threads=threads)
        evals.append(args)
        Path(value(args, "--json")).write_text(json.dumps(
            {"no_aug": {"mean": 0.4, "std": 0.0, "accs": [0.4]}, "aug": {"mean": 0.3, "std": 0.0, "accs": [0.3]}}))

    monkeypatch.setattr(variants, "rcig", rcig)
    tiny = ["width=8", "pool_size=3", "target_batch_size=128", "max_online_steps=6", "inner_lr=0.003",
            "hvp_lr=0.003"]
    variants.main(argv(tmp_path, "--variants", "faithful", "--points", "0.04", "--chunk", "2", "--only", "run",
                       "--baselines", "none",
                       *[a for item in tiny for a in ("--set", item)]))
    point = json.loads((tmp_path / "work" / "faithful.json").read_text())["points"]["0.04"]
    log = [json.loads(line) for line in (tmp_path / "work" / "faithful" / "log.jsonl").read_text().splitlines()]
    cpu = [r["cpu_seconds"] for r in log]
    assert point["steps"] == len(log) and point["tuning_cpu_seconds"] == 0  # fixed rates: no tuning
    # past 2.4 s, and at most one step of a chunk (of 2) after the one that got there (one step
    # may already be past it where a step costs more than 2.4 s of CPU)
    assert sum(cpu) >= 2.4 and sum(cpu[:-2]) < 2.4
    assert point["cpu_seconds"] == pytest.approx(sum(cpu), abs=0.1)
    assert Path(point["snapshot"]).read_bytes() == (tmp_path / "work" / "faithful" / "distilled.safetensors").read_bytes()
    assert value(evals[0], "--settings") == "both" and point["aug"]["mean"] == 0.3
