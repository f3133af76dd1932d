"""A run SIGKILLed at any moment, or stopped by a signal, resumes and ends bit-identical to an
uninterrupted run; a signal never loses a finished iteration.

The stopped runs are subprocesses told where to die, or which signal to send themselves, by
``RCIG_TEST_KILL_AT=<phase>:<n>[:<SIGNAL>]`` (rcig.crashpoints); the reference run and the
resumes run in this process.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, set_args
from rcig.algorithm.outer import Distiller
from rcig.errors import RcigError
from rcig.io import load
from rcig.run.checkpoint import load_checkpoint
from rcig.run.driver import distill
from rcig.run.interrupts import Interrupted

# pool networks that stay trained across checkpoints (1-2 steps per use, replaced after 100),
# so a checkpoint holds trained members whole and untrained ones as seeds
CONFIG = {**TINY, "max_online_steps": 100, "n_max_steps_pool": 3, "checkpoint_iters": [2]}
# the same with augmented inner solves and pool steps and a second, augmented pass per step,
# whose draws a resume must continue too
AUGMENTED = {**CONFIG, "aug": ["crop", "rotate", "translate", "cutout"], "aug_repeats": 1}
STEPS, EVERY = 5, 2


def command(out, steps=STEPS, config=CONFIG):
    return [sys.executable, "-m", "rcig", "distill", "--steps", str(steps), "--seed", "3", "--out", str(out),
            "--checkpoint-every", str(EVERY), "--no-eval", "--quiet", *set_args(config)]


def stopped_run(out, at: str, status: int, config=CONFIG) -> subprocess.CompletedProcess:
    # the thread count of this process, where the reference and the resumes run: float sums
    # depend on it, and a resume must match the reference bit for bit
    env = {**os.environ, "RCIG_TEST_KILL_AT": at, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(command(out, config=config), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == status, (at, done.returncode, done.stderr)
    return done


def logged_iterations(out) -> list[int]:
    return [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return distill("digits", 1, steps=STEPS, seed=3, out=out, overrides=CONFIG, checkpoint_every=EVERY,
                   progress=False)


def assert_resumes_to_the_reference(out, reference, config=CONFIG):
    """The one place that checks "a resumed run equals the uninterrupted one": the run in ``out``,
    however it was stopped, resumed to STEPS, gives the reference's set, log and files."""
    with pytest.raises(RcigError, match="already holds a run"):  # a fresh run never mixes with it
        distill("digits", 1, steps=STEPS, seed=3, out=out, overrides=config, progress=False)
    resumed = distill(out=out, resume=True, steps=STEPS, checkpoint_every=EVERY, progress=False)
    assert torch.equal(resumed.images, reference.images) and torch.equal(resumed.labels, reference.labels)
    saved = load(out / "distilled.safetensors")
    assert torch.equal(saved.images, reference.images)
    assert logged_iterations(out) == list(range(1, STEPS + 1))
    assert (out / "grid.png").is_file() and (out / "checkpoints" / "iter_2.safetensors").is_file()
    leftovers = [p.name for p in out.rglob(".*.tmp")]
    assert not leftovers


# every phase of a run: before the iteration-0 checkpoint, inside checkpoint writes (the
# temporary file complete, not yet renamed), between a step and its log line, between the
# log line and the checkpoint, right after one, and between the two final outputs
KILL_POINTS = ["tuned:1", "checkpoint-write:1", "stepped:1", "logged:3", "checkpoint-write:2", "checkpointed:2",
               "outputs:1"]


@pytest.mark.slow
@pytest.mark.parametrize("at", KILL_POINTS)
def test_a_run_killed_anywhere_resumes_bit_identically(tmp_path, reference, at):
    out = tmp_path / "run"
    stopped_run(out, at, -signal.SIGKILL)
    assert_resumes_to_the_reference(out, reference)


def test_an_augmented_run_killed_between_checkpoints_resumes_bit_identically(tmp_path):
    reference = distill("digits", 1, steps=STEPS, seed=3, out=tmp_path / "whole", overrides=AUGMENTED,
                        checkpoint_every=EVERY, progress=False)
    out = tmp_path / "run"
    stopped_run(out, "logged:3", -signal.SIGKILL, AUGMENTED)
    assert_resumes_to_the_reference(out, reference, AUGMENTED)


# (where the signal comes, the iteration the run must stop at, checkpointed): the setup's
# checkpoint, or the iteration in flight finished; iteration 3 is no periodic checkpoint (every
# 2), so a run that only kept its periodic checkpoint would lose it. SIGINT takes the same path.
SIGNAL_POINTS = [("checkpointed:1:SIGHUP", 0), ("stepped:3:SIGTERM", 3), ("checkpoint-write:2:SIGUSR1", 3)]


@pytest.mark.slow
@pytest.mark.parametrize("at,kept", SIGNAL_POINTS)
def test_a_signalled_run_keeps_every_finished_iteration_and_resumes_bit_identically(tmp_path, reference, at, kept):
    out = tmp_path / "run"
    name = at.split(":")[2]
    done = stopped_run(out, at, 128 + signal.Signals[name])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"rcig: stopped by {name}") and f"rcig distill --out {out} --resume" in last, last
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == kept
    assert logged_iterations(out) == list(range(1, kept + 1))
    assert_resumes_to_the_reference(out, reference)


@pytest.mark.slow
def test_sigterm_from_outside_ends_a_run_with_its_last_iteration_checkpointed(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(command(out, steps=1000), env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "log.jsonl").exists() or len(logged_iterations(out)) < 2:
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGTERM)
    assert run.wait(timeout=120) == 128 + signal.SIGTERM, run.stderr.read()
    last = logged_iterations(out)[-1]
    assert last >= 2 and load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == last


@pytest.mark.parametrize("grace,signals", [(0.05, 1), (60.0, 2)])
def test_a_step_past_the_grace_or_met_by_a_second_signal_is_abandoned(tmp_path, reference, monkeypatch, grace,
                                                                      signals):
    """The state from before the abandoned step is checkpointed, not the half-updated one."""
    real = Distiller.step

    def step(self, state):
        record = real(self, state)
        if state.iteration == 4:  # the state holds the step's results, but the step has not returned
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        return record

    monkeypatch.setattr(Distiller, "step", step)
    out = tmp_path / "run"
    started = time.monotonic()
    with pytest.raises(Interrupted, match="in iteration 4, which was abandoned; the checkpoint holds iteration 3") as info:
        distill("digits", 1, steps=STEPS, seed=3, out=out, overrides=CONFIG, checkpoint_every=EVERY, progress=False,
                grace=grace)
    assert info.value.exit_status == 128 + signal.SIGTERM and time.monotonic() - started < 25
    # iteration 3 is no periodic checkpoint (every 2): the state before the abandoned step was saved
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == 3 and logged_iterations(out) == [1, 2, 3]
    monkeypatch.undo()
    assert_resumes_to_the_reference(out, reference)


def test_a_finished_run_keeps_a_small_checkpoint_unless_asked_for_the_whole_state(tmp_path, reference):
    """The pool's trained networks leave a finished run's checkpoint; an extension is then
    deterministic (the pool's networks restart from their seeds), and exact with keep_checkpoint."""
    kept, small = tmp_path / "kept", tmp_path / "small"
    for out, keep in ((kept, True), (small, False)):
        distill("digits", 1, steps=3, seed=3, out=out, overrides=CONFIG, checkpoint_every=EVERY, progress=False,
                keep_checkpoint=keep)
    whole, light = (load_checkpoint(out / "checkpoints" / "latest.pt") for out in (kept, small))
    assert any("params" in m for m in whole["pool"]["members"])
    assert all(set(m) == {"seed", "steps"} and m["steps"] == 0 for m in light["pool"]["members"])
    assert [m["seed"] for m in light["pool"]["members"]] == [m["seed"] for m in whole["pool"]["members"]]
    assert torch.equal(light["support"]["x"], whole["support"]["x"]) and light["generator"].equal(whole["generator"])
    assert (small / "checkpoints" / "latest.pt").stat().st_size < (kept / "checkpoints" / "latest.pt").stat().st_size / 3
    assert_resumes_to_the_reference(kept, reference)
    shutil.copytree(small, tmp_path / "again")
    extended = [distill(out=out, resume=True, steps=STEPS, progress=False) for out in (small, tmp_path / "again")]
    assert torch.equal(extended[0].images, extended[1].images)  # deterministic
    assert not torch.equal(extended[0].images, reference.images)  # not the 5-step run: the pool restarted


def test_a_partial_last_log_line_is_dropped_on_resume(tmp_path):
    out = tmp_path / "run"
    distill("digits", 1, steps=2, seed=0, out=out, overrides=TINY, checkpoint_every=2, progress=False)
    text = (out / "log.jsonl").read_text()
    (out / "log.jsonl").write_text(text + '{"iter": 3, "outer_lo')  # a kill cut this write short
    distill(out=out, resume=True, steps=3, progress=False)
    assert [json.loads(line)["iter"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    (out / "log.jsonl").write_text(text.replace("\n", "\nnot json\n", 1))
    with pytest.raises(RcigError, match="line 2 is not a log record"):
        distill(out=out, resume=True, steps=4, progress=False)


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        out = tmp_path / "run"
        distill("digits", 1, steps=1, seed=0, out=out, overrides=TINY, progress=False)
    finally:
        os.umask(previous)
    for name in ("distilled.safetensors", "grid.png", "run.json", "log.jsonl", "checkpoints/latest.pt"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


def test_a_fresh_run_never_appends_to_an_old_log(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"iter": 1, "from": "an older run"}\n')  # no run.json: not a run
    distill("digits", 1, steps=1, seed=0, out=out, overrides=TINY, progress=False)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1] and "from" not in records[0]


def test_a_time_budget_counts_the_tuning_and_still_runs_one_step(tmp_path):
    # the tuning alone outlasts a 0.06 s budget: one step runs (a resume always advances), then it stops
    out = tmp_path / "run"
    distill("digits", 1, steps=5, seed=0, out=out, overrides={k: v for k, v in TINY.items()
                                                              if k not in ("inner_lr", "hvp_lr")},
            progress=False, max_minutes=0.001)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "tuning" in records[0] and [r["iter"] for r in records[1:]] == [1]
    assert (out / "distilled.safetensors").exists()
    distill(out=out, resume=True, progress=False, max_minutes=0.001)
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["iter"] == 2


def test_a_budget_without_a_step_count_is_ended_by_the_budget_not_the_quick_default(tmp_path):
    from rcig.run.driver import QUICK_STEPS, UNTIL_BUDGET, resolve_config
    from rcig.data import prepare

    digits = prepare("digits", None).dataset
    assert resolve_config(digits, None, TINY, None).steps == QUICK_STEPS["digits"]  # no budget: the quick 50
    assert resolve_config(digits, None, TINY, None, budgeted=True).steps == UNTIL_BUDGET
    assert resolve_config(digits, None, {**TINY, "steps": 3}, None, budgeted=True).steps == 3  # an override wins
    budgeted = distill("digits", 1, seed=0, out=tmp_path / "b", overrides=TINY, progress=False, max_minutes=0.001)
    assert budgeted.meta["config"]["steps"] == UNTIL_BUDGET
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["steps"] == UNTIL_BUDGET
    counted = distill("digits", 1, seed=0, steps=2, overrides=TINY, progress=False, max_minutes=0.001)
    assert counted.meta["config"]["steps"] == 2  # a step count given with the budget still caps the run
