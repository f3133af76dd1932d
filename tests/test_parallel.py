"""Several processes: 2 ranks x 1 thread (gloo) give one rank's answer; parallel evaluation;
devices; the pieces of rcig.parallel."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY
from rcig import parallel
from rcig.errors import RcigError
from rcig.parallel import Team

SRC = str(Path(__file__).resolve().parents[1] / "src")
STEPS, SEED = 3, 4
CPU = torch.device("cpu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recording_targets(monkeypatch_like, store: list):
    """Patch the direct gradient to record the target images each call sees."""
    import rcig.algorithm.meta as meta

    real = meta.direct_gradient

    def recorded(base, support, delta, target, *args, **kwargs):
        store.append(target.x.clone())
        return real(base, support, delta, target, *args, **kwargs)

    monkeypatch_like(meta, "direct_gradient", recorded)


def rank_main(rank: int, world: int, port: int, out: str, drift: bool) -> None:
    """One rank of a run (spawned): joins the gloo group, distils, saves what it saw."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from rcig.algorithm import outer
    from rcig.run.driver import distill

    seen: list = []
    recording_targets(setattr, seen)
    if drift and rank == 1:  # this rank's optimiser goes its own way: the check must notice
        real_step = outer.AdaBelief.step

        def nudged(self, *args, **kwargs):
            new, state = real_step(self, *args, **kwargs)
            return {**new, "x": new["x"] + 1e-6}, state

        outer.AdaBelief.step = nudged
    team = parallel.join("cpu")
    try:
        distill("digits", 1, steps=STEPS, seed=SEED, out=Path(out) / "run", overrides=TINY, progress=False, team=team)
        torch.save({"targets": seen}, Path(out) / f"rank{rank}.pt")
    except RcigError as exc:
        (Path(out) / f"rank{rank}.error").write_text(str(exc))
    finally:
        parallel.leave()
    # What a rank had to do is on disk: it skips the interpreter's teardown, where gloo's threads
    # have been seen to abort (SIGABRT) a rank that the other one outlived by a moment.
    os._exit(0)


def spawn_ranks(tmp_path, world: int, drift: bool = False) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(rank_main, args=(world, free_port(), str(tmp_path), drift), nprocs=world,
                       start_method="spawn", join=True)


def test_two_ranks_give_one_ranks_support_and_targets(tmp_path, monkeypatch):
    from rcig.run.driver import distill

    one_targets: list = []
    recording_targets(monkeypatch.setattr, one_targets)
    torch.set_num_threads(1)
    one = distill("digits", 1, steps=STEPS, seed=SEED, out=tmp_path / "one", overrides=TINY, progress=False,
                  device="cpu")
    spawn_ranks(tmp_path, 2)

    # the same target images each step, split into two contiguous halves
    shares = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["targets"] for r in (0, 1)]
    assert len(one_targets) == STEPS == len(shares[0]) == len(shares[1])
    for whole, first, second in zip(one_targets, *shares):
        assert len(first) == len(second) == len(whole) // 2
        assert torch.equal(torch.cat([first, second]), whole)

    # the same support up to float summation order, and the same logged step (loss, norms)
    two = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    mine = torch.load(tmp_path / "one" / "checkpoints" / "latest.pt", weights_only=True)
    for key in ("x", "y", "log_temp"):
        torch.testing.assert_close(two["support"][key], mine["support"][key], rtol=0, atol=1e-4)
    assert (two["support"]["x"] - mine["support"]["x"]).abs().max() < 1e-4
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in ("one", "run")]
    for a, b in zip(*logs):
        assert b["outer_loss"] == pytest.approx(a["outer_loss"], rel=1e-5)
        assert b["outer_acc"] == pytest.approx(a["outer_acc"], abs=1e-6)
        for part in ("grad_norm", "direct_norm", "implicit_norm"):
            for leaf in ("x", "y", "log_temp"):
                assert b[part][leaf] == pytest.approx(a[part][leaf], rel=1e-3, abs=1e-9), (part, leaf)
    assert (tmp_path / "run" / "distilled.safetensors").exists()
    assert not (tmp_path / "rank0.error").exists()
    # a different seed moves the support far more than the summation order does
    other = distill("digits", 1, steps=STEPS, seed=SEED + 1, overrides=TINY, progress=False, device="cpu")
    assert (other.images - one.images).abs().max() > 0.1


def test_ranks_that_drift_apart_stop_with_one_line(tmp_path):
    spawn_ranks(tmp_path, 2, drift=True)
    errors = [(tmp_path / f"rank{r}.error").read_text() for r in (0, 1)]
    assert errors[0] == errors[1]
    assert errors[0].startswith("ranks drifted apart at iteration 1: the support of rank(s) 1 differs")


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rcig", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})})


def test_parallel_eval_scores_each_network_as_the_serial_run(tmp_path):
    from rcig.evaluation.baselines import baseline_set
    from rcig import evaluate
    from rcig.io import save

    save(baseline_set("digits", 2, method="random", seed=0), tmp_path / "set.safetensors")
    torch.set_num_threads(1)
    serial = evaluate(tmp_path / "set.safetensors", models=3, steps=20, test_limit=200,
                      json_out=tmp_path / "serial.json", progress=False)
    done = run_cli("eval", str(tmp_path / "set.safetensors"), "--models", "3", "--steps", "20", "--test-limit", "200",
                   "--json", str(tmp_path / "two.json"), "--workers", "2", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    two = json.loads((tmp_path / "two.json").read_text())
    assert set(two) == set(serial)
    for name in ("no_aug", "aug"):
        assert two[name]["accs"] == serial[name]["accs"]  # network by network, same seeds
        assert two[name]["mean"] == serial[name]["mean"]
    assert len(set(serial["no_aug"]["accs"] + serial["aug"]["accs"])) > 1  # the networks differ
    assert not list(tmp_path.glob("two.json.partial*"))


def test_a_parallel_eval_takes_networks_scored_before_once(tmp_path):
    """A network the record holds (here with a made-up score) is not trained again, counted
    once (not once per rank), and the ranks share out the rest as one plan."""
    from rcig.evaluation.baselines import baseline_set
    from rcig.evaluation.protocol import Scored
    from rcig.evaluation.suite import ScoreBook, arch_settings, protocol_settings
    from rcig.io import load, save

    save(baseline_set("digits", 2, method="random", seed=0), tmp_path / "set.safetensors")
    ds = load(tmp_path / "set.safetensors")
    settings = arch_settings(protocol_settings(ds.meta, models=3, steps=20, test_limit=200), "conv")
    ScoreBook(tmp_path / "two.json").memo(ds.images, ds.labels, settings, False).put("aug", 1, Scored(0.125, False))
    done = run_cli("eval", str(tmp_path / "set.safetensors"), "--models", "3", "--steps", "20", "--test-limit", "200",
                   "--json", str(tmp_path / "two.json"), "--workers", "2", "--device", "cpu", "--settings", "aug")
    assert done.returncode == 0, done.stderr
    accs = json.loads((tmp_path / "two.json").read_text())["aug"]["accs"]
    assert accs[1] == 0.125 and accs[0] != 0.125 and accs[2] != 0.125, accs


def test_jobs_are_shared_longest_first():
    from rcig.evaluation.protocol import assign_jobs

    costs = [2500] * 5 + [1000] * 5  # 5 networks without augmentation (2.5x the steps), 5 with
    owner = assign_jobs(costs, 2)
    loads = [sum(c for c, o in zip(costs, owner) if o == r) for r in (0, 1)]
    assert sorted(loads) == [8500, 9000]
    assert assign_jobs(costs, 1) == [0] * 10
    assert sorted(set(assign_jobs(costs, 12))) == list(range(10))  # more ranks than jobs: one each


def test_share_covers_the_batch_once():
    for n in (7, 128, 1024):
        for world in (w for w in (1, 2, 3, 8) if w <= n):
            parts = [parallel.share(n, Team(r, world, CPU)) for r in range(world)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1
    with pytest.raises(RcigError, match="cannot split 3 target images across 4 ranks"):
        parallel.share(3, Team(0, 4, CPU))
    rows = torch.tensor([9, 2, 5, 0])
    assert parallel.share_rows(rows, slice(2, 6)).tolist() == [0, 3]
    assert parallel.share_rows(None, slice(2, 6)) is None


def test_devices_and_their_errors():
    assert parallel.resolve_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert parallel.resolve_device("auto") == CPU
        with pytest.raises(RcigError, match="sees no CUDA GPU"):
            parallel.resolve_device("cuda:1")
    with pytest.raises(RcigError, match="unknown device 'tpu'"):
        parallel.resolve_device("tpu")
    done = run_cli("eval", "nothing.safetensors", "--device", "gpu0")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "rcig: error: unknown device 'gpu0'; choose auto|cpu|cuda|cuda:K|mps"]


def test_to_device_leaves_generator_states_alone():
    state = {"g": torch.Generator().get_state(), "x": [torch.ones(2)], "count": 3}
    moved = parallel.to_device(state, CPU)
    assert moved["g"].dtype == torch.uint8 and moved["count"] == 3 and torch.equal(moved["x"][0], torch.ones(2))


def test_workers_threads_from_the_environment_and_the_oversubscription_warning(monkeypatch):
    from rcig.parallel.launcher import oversubscribed_warning, worker_threads

    for text, threads in (("2", 2), ("1", 1), ("0", None), ("x", None), ("", None)):
        monkeypatch.setenv("OMP_NUM_THREADS", text)
        assert worker_threads(2) == threads, text
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert worker_threads(2) is None
    assert oversubscribed_warning(2, 2, 2) == ("rcig: warning: 2 workers x OMP_NUM_THREADS=2 = 4 threads on 2 cores: "
                                               "oversubscribed ranks can run several times slower; unset "
                                               "OMP_NUM_THREADS to give each 1")


def test_without_workers():
    from rcig.cli import without_workers

    assert without_workers(["eval", "f", "--workers", "2", "--json", "x"]) == ["eval", "f", "--json", "x"]
    assert without_workers(["eval", "--workers=3", "f"]) == ["eval", "f"]


def test_subnormal_floats_are_flushed_inside_the_block_and_the_callers_mode_comes_back():
    tiny = lambda: torch.count_nonzero(torch.full((16,), 1e-30) * 1e-10)  # 1e-40: subnormal in float32  # noqa: E731
    torch.set_flush_denormal(False)
    assert tiny() == 16 and not parallel.flushing_subnormals()
    with parallel.subnormals_flushed():
        assert tiny() == 0 and parallel.flushing_subnormals()
    assert tiny() == 16
    torch.set_flush_denormal(True)  # a caller that flushes keeps flushing
    with parallel.subnormals_flushed():
        pass
    assert tiny() == 0
    torch.set_flush_denormal(False)
