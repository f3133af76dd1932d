"""A run SIGKILLed at any moment resumes and ends bit-identical to an uninterrupted run.

The killed runs are subprocesses told where to die by ``RCIG_TEST_KILL_AT=<phase>:<n>``
(rcig.crashpoints); the reference run and the resumes run in this process.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from rcig.run.driver import distill
from rcig.errors import RcigError
from rcig.io import load

# pool networks that stay trained across checkpoints (1-2 steps per use, replaced after 100),
# so a checkpoint holds trained members whole and untrained ones as seeds
TINY = {"width": 8, "pool_size": 3, "target_batch_size": 128, "max_online_steps": 100, "n_max_steps_pool": 3,
        "inner_lr": 3e-3, "hvp_lr": 3e-3, "checkpoint_iters": [2]}
STEPS, EVERY = 5, 2


def command(out, *extra):
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return [sys.executable, "-m", "rcig", "distill", "--steps", str(STEPS), "--seed", "3", "--out", str(out),
            "--checkpoint-every", str(EVERY), "--no-eval", "--quiet", *sets, *extra]


def killed_run(out, at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RCIG_TEST_KILL_AT": at, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (at, done.returncode, done.stderr)
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return distill("digits", 1, steps=STEPS, seed=3, out=out, overrides=TINY, checkpoint_every=EVERY,
                   progress=False)


# every phase of a run: before the iteration-0 checkpoint, inside checkpoint writes (the
# temporary file complete, not yet renamed), between a step and its log line, between the
# log line and the checkpoint, right after one, and between the two final outputs
KILL_POINTS = ["tuned:1", "checkpoint-write:1", "stepped:1", "logged:3", "checkpoint-write:2", "checkpointed:2",
               "outputs:1"]


@pytest.mark.slow
@pytest.mark.parametrize("at", KILL_POINTS)
def test_a_run_killed_anywhere_resumes_bit_identically(tmp_path, reference, at):
    out = tmp_path / "run"
    killed_run(out, at)
    with pytest.raises(RcigError, match="already holds a run"):  # a fresh run never mixes with it
        distill("digits", 1, steps=STEPS, seed=3, out=out, overrides=TINY, progress=False)
    resumed = distill(out=out, resume=True, checkpoint_every=EVERY, progress=False)
    assert torch.equal(resumed.images, reference.images) and torch.equal(resumed.labels, reference.labels)
    saved = load(out / "distilled.safetensors")
    assert torch.equal(saved.images, reference.images)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, STEPS + 1))
    assert (out / "grid.png").is_file() and (out / "checkpoints" / "iter_2.safetensors").is_file()
    leftovers = [p.name for p in out.rglob(".*.tmp")]
    assert not leftovers


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


def test_the_budget_stops_before_a_step_that_would_overrun_it():
    from rcig.run.driver import past_budget

    # began at 0, loop from 30 s (loading + tuning), steps of 10 s, budget 1 min
    assert not past_budget(None, 0, 30, 1e9, 1)
    assert not past_budget(1, 0, 30, 40, 1)  # 40 s done, the next ends at 50 s
    assert not past_budget(1, 0, 30, 50, 2)  # the next ends at 60 s: still inside
    assert past_budget(1, 0, 30, 55, 2)  # 12.5 s a step: the next would end at 67.5 s
    assert past_budget(0.5, 0, 30, 40, 1)  # the tuning counts: 30 s of 30 gone
