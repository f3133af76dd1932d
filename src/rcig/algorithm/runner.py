"""``rcig.distill``: a whole distillation run with its files, checkpoints and resume.

The run driver around the outer loop (:class:`rcig.algorithm.outer.Distiller`): it resolves
the config, builds the distillation network (:func:`rcig.models.distillation_network`), steps
the loop, and writes, checkpoints and resumes.

Output directory layout::

    DIR/distilled.safetensors   the EMA support (rcig.io format), written at the end
    DIR/grid.png                the distilled images, one row per class
    DIR/log.jsonl               one JSON record per iteration (+ "eval" records, and an
                                iteration-0 "tuning" record: the tuned rates, its wall and CPU seconds;
                                with init=herding an iteration-0 "init" record: its seconds)
    DIR/run.json                dataset, ipc, seed, config: what --resume checks against; and the
                                command, device and versions of its last part (environment)
    DIR/checkpoints/latest.pt   the whole RunState, every `checkpoint_every` iterations
    DIR/checkpoints/iter_N.safetensors   the EMA support at the config's checkpoint_iters
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rcig import parallel
from rcig.algorithm.checkpoint import load_checkpoint, save_checkpoint
from rcig.algorithm.memory import available_gb, shortfall_warning, step_memory
from rcig.algorithm.meta import BatchSplit, support_row_count
from rcig.algorithm.outer import Distiller, RunState, start_images
from rcig.atomic import atomic_write
from rcig.config import Config, default_preset_name, from_dict, load_preset
from rcig.errors import RcigError
from rcig.models import distillation_network
from rcig.parallel import Team
from rcig.timing import timed

if TYPE_CHECKING:
    from rcig.io import DistilledSet

# Short default runs where a dataset is cheap enough to distil in minutes on a CPU.
QUICK_STEPS = {"digits": 50}
# The step count of a fresh run given a time budget and no step count: the budget ends it.
UNTIL_BUDGET = 1_000_000


def resolve_config(dataset, preset: str | None, overrides: dict[str, Any] | None, steps: int | None,
                   budgeted: bool = False) -> Config:
    """The preset (the dataset's default if None) with overrides and the step count applied.

    The step count: ``steps``, else a ``steps`` override, else ``UNTIL_BUDGET`` for a run
    with a time budget (``budgeted``: the budget ends it), else digits' quick 50, else the
    preset's."""
    name = preset or default_preset_name(dataset.image_size, dataset.channels)
    cfg = load_preset(name, dataset.image_size, dataset.channels)
    changes = dict(overrides or {})
    if steps is not None:
        changes["steps"] = steps
    elif "steps" not in changes and budgeted:
        changes["steps"] = UNTIL_BUDGET
    elif "steps" not in changes and dataset.spec in QUICK_STEPS:
        changes["steps"] = QUICK_STEPS[dataset.spec]
    if cfg.flip and dataset.channels == 1 and "flip" not in changes:
        changes["flip"] = False  # the flip trick is for natural RGB images only
    return cfg.replace(**changes) if changes else cfg


def past_budget(max_minutes: float | None, began: float, loop_started: float, now: float, steps_done: int) -> bool:
    """Whether a run that began at ``began`` (seconds), started its loop at ``loop_started``
    and has done ``steps_done`` >= 1 steps since should stop rather than start another: the
    next step, at the loop's mean time per step so far, would end past ``max_minutes``."""
    if max_minutes is None:
        return False
    mean_step = (now - loop_started) / steps_done
    return now - began + mean_step > 60 * max_minutes


def distilled_set(state: RunState, distiller: Distiller, prepared, cfg: Config, seed: int) -> DistilledSet:
    """The EMA support as an :class:`rcig.io.DistilledSet`."""
    from rcig.io import make_set

    support = distiller.ema.average(state.ema) if state.ema["count"] else state.support
    return make_set(prepared, support["x"], support["y"], ipc=distiller.ipc, method="rcig", seed=seed,
                    flip=cfg.flip, protocol=cfg.protocol(), config=cfg.to_dict(),
                    iteration=state.iteration, log_temp=float(support["log_temp"]))


def _run_identity(dataset_spec: str, ipc: int, seed: int, cfg: Config, device) -> dict[str, Any]:
    """What run.json holds: the run (what --resume checks) and, under ``environment``, where and
    how its last part ran (the command, device, versions: for the report, not checked)."""
    return {"dataset": dataset_spec, "ipc": ipc, "seed": seed, "config": cfg.to_dict(),
            "environment": run_environment(device)}


def run_environment(device) -> dict[str, Any]:
    """The command line (``rcig ...``, or None from Python), the device and the versions."""
    import platform
    import shlex

    import torch

    from rcig.version import __version__

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    ours = program.name == "rcig" or (program.name == "__main__.py" and program.parent.name == "rcig")
    command = "rcig " + shlex.join(sys.argv[1:]) if ours else None
    return {"command": command, "device": str(device), "torch": torch.__version__, "rcig": __version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


DEFAULTS = {"dataset": "digits", "ipc": 1, "seed": 0}


def _stored_run(out_dir: Path | None, resume: bool) -> dict[str, Any] | None:
    """The run description in ``out_dir`` to resume (validated), or None for a fresh run,
    which must not go into a folder holding another run (it would mix two runs' files)."""
    from rcig import validate

    if out_dir is None:
        if resume:
            raise RcigError("--resume needs --out DIR, the directory of the run to continue")
        return None
    run_file = out_dir / "run.json"
    if not resume:
        if run_file.exists() or (out_dir / "checkpoints" / "latest.pt").exists():
            raise RcigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        return None
    if not run_file.is_file():
        raise RcigError(f"nothing to resume: {run_file} does not exist")
    return validate.run_description(run_file.read_text(errors="replace"), str(run_file))


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log records past the resumed iteration (and a line a kill cut short), so the log
    matches the state."""
    from rcig import validate

    if not path.exists():
        return
    keep = [r for r in validate.log_records(path.read_text(errors="replace"), str(path)) if r["iter"] <= iteration]
    text = "".join(json.dumps(r) + "\n" for r in keep)
    atomic_write(path, lambda fh: fh.write(text.encode()))


RUN_FILES = ("run.json", "log.jsonl", "distilled.safetensors", "grid.png", "eval.json",
             "checkpoints/latest.pt", "checkpoints/iter_*.safetensors")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """The temporary files (``.NAME.XXXX.tmp``, rcig.atomic) of writes of a run's own files
    that a kill interrupted; a checkpoint's can be large. Nothing else is touched."""
    for name in RUN_FILES:
        folder, _, base = name.rpartition("/")
        for tmp in (out_dir / folder).glob(f".{base}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _checked_checkpoint(distiller: Distiller, ckpt_path: Path) -> dict[str, Any] | None:
    """The checkpoint's state, checked against this run's (structure, shapes, pool) by loading
    it into a scratch state; None when there is none yet (a run killed before its first
    checkpoint starts from the beginning)."""
    from rcig import validate

    if not ckpt_path.exists():
        return None
    stored = load_checkpoint(ckpt_path)
    scratch = distiller.new_state(blank=True)
    template = {k: v for k, v in scratch.to_dict().items() if k != "pool"}
    validate.checkpoint_like({**template, "pool": {}, "inner_outcomes": [0]},
                             {**stored, "pool": {}}, str(ckpt_path))
    if stored["iteration"] < 0 or stored["inner_lr"] <= 0 or stored["hvp_lr"] <= 0:
        raise RcigError(f"{ckpt_path} is not a checkpoint of this run (negative iteration or learning rate)")
    scratch.load_dict(stored, str(ckpt_path))  # the pool's own checks
    return stored


@parallel.with_subnormals_flushed
def distill(dataset: str | None = None, ipc: int | None = None, *, preset: str | None = None,
            steps: int | None = None, seed: int | None = None, out: str | os.PathLike | None = None,
            resume: bool = False, overrides: dict[str, Any] | None = None, data_dir: str | None = None,
            checkpoint_every: int = 10, eval_every: int | None = None, eval_settings=None,
            max_minutes: float | None = None, progress: bool = True, device: str = "auto", team: Team | None = None):
    """Distil ``dataset`` into ``ipc`` images per class with RCIG; returns a DistilledSet.

    ``device``: ``auto`` (a CUDA GPU if torch sees one, else the CPU), ``cpu``, ``cuda``,
    ``cuda:K``, ``mps``. Under torchrun the process joins its team (``team``: one given
    explicitly) and each outer step's target batch is split across the ranks
    (:mod:`rcig.parallel`); the leader alone reads and writes ``out``.

    Defaults: the embedded ``digits`` set, 1 image per class, seed 0, the dataset's preset.
    With ``out`` set, writes the files listed in the module docstring; with ``resume=True``
    it continues the run found there exactly where its checkpoint left it (arguments left
    as None are taken from that run; given ones must agree with it). ``max_minutes`` is this
    call's wall-clock budget, data loading and learning-rate tuning included: the run stops
    (checkpointed, and writes the outputs of the run so far) rather than start a step that
    would end past it at the mean duration of this call's steps; at least one step runs, so
    a resumed run always advances. A fresh run given a budget and no ``steps`` (nor a
    ``steps`` override) runs until the budget ends it (``UNTIL_BUDGET`` steps at most), not
    to the preset's 1,000 or digits' quick 50.
    """
    from rcig import validate
    from rcig.crashpoints import crash_point
    from rcig.progress import Progress
    from rcig.data import prepare

    began = time.perf_counter()  # --max-minutes counts from here
    team = team or parallel.join(device)
    leader = team.leader
    progress = progress and leader
    out_dir = validate.output_dir(out, "--out") if out is not None else None
    validate.minutes(max_minutes)
    stored = parallel.from_leader(lambda: _stored_run(out_dir, resume), team)
    given = {"dataset": dataset, "ipc": ipc, "seed": seed}
    chosen = {k: v if v is not None else (stored[k] if stored else DEFAULTS[k]) for k, v in given.items()}
    dataset, ipc, seed = chosen["dataset"], chosen["ipc"], validate.seed(chosen["seed"])
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise RcigError(f"ipc must be a positive integer, got {ipc!r}")
    with parallel.leader_first(team):  # the others then find its downloads and caches
        prepared = prepare(dataset, data_dir)
    ds = prepared.dataset
    if stored and preset is None:  # overrides apply to the stored config (and must agree with it)
        cfg = from_dict(stored["config"], where=f"{out_dir}/run.json")
        changes = {**(overrides or {}), **({"steps": steps} if steps is not None else {})}
        cfg = cfg.replace(**changes) if changes else cfg  # a resumed run may be extended
    else:
        cfg = resolve_config(ds, preset, overrides, steps, budgeted=max_minutes is not None)
    validate.network_fits("conv", ds.channels, ds.image_size, cfg.depth, ds.spec)
    if leader and team.device.type == "cpu":  # a GPU's memory is not the system's
        need = step_memory(cfg, support_row_count(ipc * ds.num_classes, cfg.flip), ds.channels, ds.image_size, ds.num_classes)
        if warning := shortfall_warning(need, available_gb()):
            print(warning, file=sys.stderr, flush=True)
    identity = _run_identity(ds.spec, ipc, seed, cfg, team.device)

    distiller = Distiller(prepared.x_train, prepared.y_train, ds.num_classes, ipc, cfg, seed,
                          distillation_network(cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                               image_size=ds.image_size), team.device,
                          BatchSplit(share=lambda n: parallel.share(n, team),
                                     reduce=lambda tensors, weight: parallel.weighted_sum(tensors, weight, team)))
    state = distiller.new_state(blank=True)  # the initial support is made below unless a checkpoint is resumed
    ckpt_path = out_dir / "checkpoints" / "latest.pt" if out_dir and leader else None
    log_path = out_dir / "log.jsonl" if out_dir and leader else None
    loaded: list[dict[str, Any]] = []

    def open_run_dir() -> bool:
        """The leader's checks (all before any write) and writes in ``out``; True when a
        checkpoint is to be resumed."""
        if out_dir is None:
            return False
        if resume:
            now = json.loads(json.dumps(identity))
            # a knob added after the run was made ran at its default (which reproduces the old code)
            then = json.loads(json.dumps(from_dict(stored["config"], where=f"{out_dir}/run.json").to_dict()))
            diff = [k for k in now if k not in ("config", "environment") and stored.get(k) != now[k]]
            diff += [f"config.{k}" for k in now["config"] if k != "steps" and then[k] != now["config"][k]]
            if diff:
                raise RcigError(f"cannot resume {out_dir}: the run there differs in {', '.join(diff)}")
            checkpoint = _checked_checkpoint(distiller, ckpt_path)
            iteration = checkpoint["iteration"] if checkpoint else 0
            if iteration > cfg.steps:
                raise RcigError(f"cannot resume {out_dir} with {cfg.steps} steps: it is at iteration {iteration} "
                                "already (a run can be extended, not shortened)")
            _truncate_log(log_path, iteration if checkpoint else -1)  # no checkpoint: the run restarts
            _remove_stale_temporaries(out_dir)
            loaded.extend([checkpoint] if checkpoint else [])
        else:
            atomic_write(log_path, lambda fh: None)  # a fresh run never appends to an older log
        text = json.dumps(identity, indent=2) + "\n"
        atomic_write(out_dir / "run.json", lambda fh: fh.write(text.encode()))
        return bool(loaded)

    def save_latest() -> None:
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, state.to_dict())
            crash_point("checkpointed")

    resumed = parallel.from_leader(open_run_dir, team)
    if resumed:
        saved = parallel.broadcast_state(loaded[0] if leader else None, team)
        state.load_dict(parallel.to_device(saved, team.device))
    else:
        with timed() as init_cost:
            state = distiller.new_state()
        if log_path is not None and start_images(cfg.init, ipc) == "herding":  # its pass over the data counts too
            _append_log(log_path, {"iter": 0, "init": {"method": "herding", **init_cost}})
        if cfg.tunes_learning_rates and (cfg.inner_lr is None or cfg.hvp_lr is None):
            if progress:
                print("rcig: tuning the inner and H^-1 g learning rates on one network ...", file=sys.stderr)
            with timed() as tune_cost, Progress(None, "tune learning rates", "trial", enabled=progress,
                                                transient=True) as trials:
                distiller.tune(state, lambda lr: trials.update(1, lr=f"{lr:.3g}"))
            if progress:
                print(f"rcig: inner_lr={state.inner_lr:.3g} hvp_lr={state.hvp_lr:.3g}", file=sys.stderr)
            if log_path is not None:  # the tuning's cost counts towards the run's (CG needs none)
                _append_log(log_path, {"iter": 0, "tuning": {"inner_lr": state.inner_lr, "hvp_lr": state.hvp_lr,
                                                             **tune_cost}})
        crash_point("tuned")
        save_latest()  # iteration 0: a run killed from here on resumes without tuning again

    started, first_step = time.perf_counter(), state.iteration
    # Rank 0 writes (ckpt_path and log_path are None elsewhere); every rank agrees, after
    # each step, on whether to stop and on the support being the same (rcig.parallel).
    total = None if cfg.steps == UNTIL_BUDGET else cfg.steps  # a budgeted run: a count, no percentage
    bar = Progress(total, f"rcig {ds.spec} ipc={ipc}", "step", enabled=progress, initial=state.iteration,
                   interval=0)  # a plain line per step: steps take seconds
    with deferred_interrupt(announce=leader) as interrupted, bar:
        while state.iteration < cfg.steps:
            record = distiller.step(state)
            crash_point("stepped")
            bar.update(1, **{"loss": f"{record['outer_loss']:.3f}",
                             "outer-batch acc": f"{record['outer_acc']:.3f}"})
            if log_path is not None:
                _append_log(log_path, record)
                crash_point("logged")
            if out_dir is not None and leader and state.iteration in cfg.checkpoint_iters:
                _save_set(distilled_set(state, distiller, prepared, cfg, seed),
                          out_dir / "checkpoints" / f"iter_{state.iteration}.safetensors")
            if eval_every and state.iteration % eval_every == 0:
                _periodic_eval(state, distiller, prepared, cfg, seed, eval_settings, log_path, bar, team)
            if state.iteration % checkpoint_every == 0 or state.iteration == cfg.steps:
                save_latest()
            out_of_time = past_budget(max_minutes, began, started, time.perf_counter(), state.iteration - first_step)
            stop = parallel.step_control(team, state.iteration, parallel.checksum(state.support),
                                         interrupted(), out_of_time)
            if stop.interrupted:
                save_latest()  # between iterations the state is consistent
                raise KeyboardInterrupt
            if stop.out_of_time:
                save_latest()
                break

    result = distilled_set(state, distiller, prepared, cfg, seed)
    if out_dir is not None and leader:
        _save_set(result, out_dir / "distilled.safetensors")
        crash_point("outputs")
        from rcig.viz import save_grid

        save_grid(result, out_dir / "grid.png")
    return result


@contextlib.contextmanager
def deferred_interrupt(announce: bool = True):
    """Let a Ctrl-C finish the current iteration: yields a function telling whether one came.

    A second Ctrl-C interrupts at once (the last periodic checkpoint then stands).
    ``announce``: say so on stderr (the leader of several ranks only).
    """
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        if announce:
            print("\nrcig: interrupted; finishing this iteration and saving a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def _save_set(ds: DistilledSet, path: Path) -> None:
    from rcig.io import save

    save(ds, path)


def _periodic_eval(state: RunState, distiller: Distiller, prepared, cfg: Config, seed: int, settings,
                   log_path: Path | None, bar, team: Team) -> None:
    from rcig.evaluation import ProtocolSettings, evaluate_support

    # one network, with augmentation only: a cheap trend line, not the full protocol
    settings = settings or ProtocolSettings(depth=cfg.depth, width=cfg.width, n_models=1, settings=("aug",),
                                            augmentations=tuple(cfg.test_augmentations))
    support = distiller.ema.average(state.ema)
    started = time.perf_counter()
    scores = evaluate_support(support["x"], support["y"], prepared.x_test, prepared.y_test, settings,
                              flip=cfg.flip, progress=False, team=team)
    record = {"iter": state.iteration, "eval": scores, "eval_seconds": round(time.perf_counter() - started, 1)}
    if not team.leader:
        return
    bar.write(f"rcig: iteration {state.iteration}: " + ", ".join(
        f"{k} {v['mean']:.4f}" for k, v in scores.items() if isinstance(v, dict) and "mean" in v))
    if log_path is not None:
        _append_log(log_path, record)
