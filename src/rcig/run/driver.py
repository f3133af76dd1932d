"""``rcig.distill``: a whole distillation run, with its folder, checkpoints, resume and stops.

The driver around the outer loop (:class:`rcig.algorithm.outer.Distiller`): it resolves the run
(dataset, config), builds the distillation network (:func:`rcig.models.distillation_network`),
starts or resumes the state, steps it in :func:`run_loop`, and writes the run folder
(:mod:`rcig.run.folder`). What the algorithm does not know about is passed into the loop from
here: the team of ranks, the periodic evaluation, the stop signals (:mod:`rcig.run.interrupts`).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from rcig import parallel
from rcig.algorithm.memory import NEVER, OVER, DataShape, choose_chunk_rows, refusal, report_line, shortfall_warning
from rcig.algorithm.meta import BatchSplit
from rcig.algorithm.outer import Distiller, RunState, anneals_to_the_end, start_images
from rcig.config import AUTO, Config, default_preset_name, from_dict, load_preset
from rcig.errors import RcigError, out_of_memory
from rcig.models import distillation_network
from rcig.parallel import Team
from rcig.run.folder import NoFolder, RunFolder, finished_state
from rcig.run.interrupts import GRACE_SECONDS, Abandon, Interrupted, Stopper, stop_on_signals
from rcig.timing import past_budget, projected_last_step, timed

if TYPE_CHECKING:
    from rcig.io import DistilledSet

# Short default runs where a dataset is cheap enough to distil in minutes on a CPU.
QUICK_STEPS = {"digits": 50}
# The step count of a fresh run given a time budget and no step count: the budget ends it.
UNTIL_BUDGET = 1_000_000
DEFAULTS = {"dataset": "digits", "ipc": 1, "seed": 0}


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


class Run(NamedTuple):
    """What is distilled: the prepared data, the resolved config, ipc and seed; ``identity`` is
    what run.json holds, which a resume must match but for its ``environment``; ``memory``
    the lines the run says of its memory once its checks have passed (:func:`fit_to_memory`)."""

    prepared: Any  # rcig.data.Prepared
    cfg: Config
    ipc: int
    seed: int
    identity: dict[str, Any]
    memory: "MemoryNote"


class MemoryNote(NamedTuple):
    """A run's chunk size, and what the leader says of its memory before the first step."""

    chunk_rows: int | None  # what the run takes (None: one graph)
    line: str  # the estimate, chunk_rows and why, the memory available (progress output)
    warning: str | None  # a set chunk_rows whose estimate does not fit (shown even when quiet)


class Loop(NamedTuple):
    """How the loop runs: checkpoint and evaluation intervals, the time budget, progress."""

    checkpoint_every: int
    eval_every: int | None
    evaluate: Callable[[dict], dict] | None  # the EMA support -> scores (rcig.evaluation)
    max_minutes: float | None
    began: float  # perf_counter() when the call began: the budget counts from there
    progress: bool
    keep_checkpoint: bool


@parallel.with_subnormals_flushed
def distill(dataset: str | None = None, ipc: int | None = None, *, preset: str | None = None,
            steps: int | None = None, seed: int | None = None, out: str | os.PathLike | None = None,
            resume: bool = False, overrides: dict[str, Any] | None = None, data_dir: str | None = None,
            checkpoint_every: int = 10, eval_every: int | None = None, eval_settings=None,
            max_minutes: float | None = None, progress: bool = True, keep_checkpoint: bool = False,
            grace: float = GRACE_SECONDS, device: str = "auto", team: Team | None = None,
            memory_gb: float | None = None) -> DistilledSet:
    """Distil ``dataset`` into ``ipc`` images per class with RCIG; returns a DistilledSet.

    What is distilled: ``dataset`` (default the embedded ``digits``), ``ipc`` (default 1),
    ``seed`` (default 0), ``preset`` (default the dataset's), ``overrides`` (config fields),
    ``steps`` (default :func:`resolve_config`'s), ``data_dir`` (where the dataset's files are).

    How: ``device``: ``auto`` (a CUDA GPU if torch sees one, else the CPU), ``cpu``, ``cuda``,
    ``cuda:K``, ``mps``; ``memory_gb``: the memory the run may take on it (None: what the
    device has available), which sets ``chunk_rows`` "auto" (:func:`fit_to_memory`). Under
    torchrun the process joins its team (``team``: one given explicitly) and each outer step's
    target batch is split across the ranks (:mod:`rcig.parallel`); the leader alone reads and
    writes ``out``.

    With ``out`` set, writes the run folder (:mod:`rcig.run.folder`), holding its lock for the
    whole call (a second process on the same folder is refused), with a checkpoint every
    ``checkpoint_every`` iterations; with ``resume=True`` it continues the run found there
    exactly where its checkpoint left it (arguments left as None are taken from that run;
    given ones must agree with it; ``steps`` may grow). ``eval_every``: score the EMA support
    every so many iterations (``eval_settings``, default one network with augmentation) into
    the log. ``max_minutes`` is this call's wall-clock budget, data loading and learning-rate
    tuning included: the run stops (checkpointed, and writes the outputs of the run so far)
    rather than start a step that would end past it at the mean duration of this call's
    steps; at least one step runs, so a resumed run always advances. A fresh run given a
    budget and no ``steps`` (nor a ``steps`` override) runs until the budget ends it.

    A finished run's checkpoint keeps the support, its optimiser and EMA states, the RNG
    states and the pool's seeds but not the pool's trained networks (:func:`finished_state`):
    a few MB. Extending it (``resume=True`` with a larger ``steps``) is deterministic, and
    restarts the pool's networks from their initial weights, so it is not bit-identical to a
    run given the larger ``steps`` from the start; ``keep_checkpoint=True`` keeps the whole
    state, and such an extension is bit-identical. A run stopped early (time budget, signal)
    always keeps the whole state.

    SIGINT, SIGTERM, SIGHUP, SIGUSR1 (:mod:`rcig.run.interrupts`): the iteration in flight
    finishes (or, past ``grace`` seconds, is abandoned), a checkpoint is written, and
    :class:`rcig.run.interrupts.Interrupted` (a KeyboardInterrupt) is raised, its message
    saying how to resume. Out of memory in a step: the state before the step is checkpointed
    and an RcigError says which settings need less.
    """
    from rcig import validate

    began = time.perf_counter()  # --max-minutes counts from here
    team = team or parallel.join(device)
    out_dir = validate.output_dir(out, "--out") if out is not None else None
    validate.minutes(max_minutes)
    validate.memory_gb(memory_gb)
    if resume and out_dir is None:
        raise RcigError("--resume needs --out DIR, the directory of the run to continue")
    folder = RunFolder(out_dir) if out_dir is not None and team.leader else NoFolder()
    try:
        stored = parallel.from_leader(lambda: folder.open(resume), team)
        run = resolve_run(dataset, ipc, seed, preset, steps, overrides, data_dir, stored, max_minutes, team,
                          memory_gb)
        ds = run.prepared.dataset
        distiller = Distiller(run.prepared.x_train, run.prepared.y_train, ds.num_classes, run.ipc, run.cfg, run.seed,
                              distillation_network(run.cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                                   image_size=ds.image_size), team.device,
                              BatchSplit(share=lambda n: parallel.share(n, team),
                                         reduce=lambda tensors, weight: parallel.weighted_sum(tensors, weight, team)))
        evaluate = periodic_evaluation(run, eval_settings, team) if eval_every else None
        loop = Loop(checkpoint_every, eval_every, evaluate, max_minutes, began, progress and team.leader,
                    keep_checkpoint)
        with stop_on_signals(grace, may_abandon=team.world == 1, announce=team.leader) as stopper:
            state = start_state(distiller, run, folder, stored, stopper, loop.progress, team)
            run_loop(distiller, state, run, folder, loop, stopper, team)
            result = distilled_set(state, distiller, run)
            folder.save_outputs(result)
            if stopper.requested():  # a signal while the outputs were written: the run is complete
                raise interrupted(stopper, folder, f"after its last iteration ({state.iteration}), its outputs written")
    except BaseException:
        folder.close(failed=True)
        raise
    folder.close()
    return result


def resolve_run(dataset, ipc, seed, preset, steps, overrides, data_dir, stored: dict | None,
                max_minutes: float | None, team: Team, memory_gb: float | None = None) -> Run:
    """The run's data and config: the arguments, else the stored run's (when resuming), else
    the defaults; a resumed run's config is its stored one with ``overrides`` and ``steps``."""
    from rcig import validate
    from rcig.data import prepare

    given = {"dataset": dataset, "ipc": ipc, "seed": seed}
    chosen = {k: v if v is not None else (stored[k] if stored else DEFAULTS[k]) for k, v in given.items()}
    dataset, ipc, seed = chosen["dataset"], validate.ipc(chosen["ipc"]), validate.seed(chosen["seed"])
    with parallel.leader_first(team):  # the others then find its downloads and caches
        prepared = prepare(dataset, data_dir)
    ds = prepared.dataset
    if stored and preset is None:  # overrides apply to the stored config (and must agree with it)
        cfg = from_dict(stored["config"], where="the run's run.json")
        changes = {**(overrides or {}), **({"steps": steps} if steps is not None else {})}
        cfg = cfg.replace(**changes) if changes else cfg  # a resumed run may be extended
    else:
        cfg = resolve_config(ds, preset, overrides, steps, budgeted=max_minutes is not None)
    validate.network_fits("conv", ds.channels, ds.image_size, cfg.depth, ds.spec)
    memory = fit_to_memory(cfg, prepared, ipc, team, resumed=bool(stored), budget_gb=memory_gb)
    cfg = cfg.replace(chunk_rows=memory.chunk_rows)
    identity = {"dataset": ds.spec, "ipc": ipc, "seed": seed, "config": cfg.to_dict(),
                "environment": run_environment(team.device)}
    return Run(prepared, cfg, ipc, seed, identity, memory)


def run_environment(device) -> dict[str, Any]:
    """Where and how a run's last part ran, for the report (not checked on resume): the command
    line (``rcig ...``, or None from Python), the device and the versions."""
    import platform
    import shlex

    import torch

    from rcig.version import __version__

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    ours = program.name == "rcig" or (program.name == "__main__.py" and program.parent.name == "rcig")
    command = "rcig " + shlex.join(sys.argv[1:]) if ours else None
    return {"command": command, "device": str(device), "torch": torch.__version__, "rcig": __version__,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def fit_to_memory(cfg: Config, prepared, ipc: int, team: Team, resumed: bool = False,
                  budget_gb: float | None = None) -> MemoryNote:
    """The run's ``chunk_rows``: ``cfg``'s, or where it is "auto", the size that fits the memory
    available on the run's device, at most ``budget_gb`` (:func:`rcig.algorithm.memory.choose_chunk_rows`;
    the leader's reading, taken on every rank); and what to say of it (``resumed``: a set
    value is the run's own). A run that fits at no chunk size is refused here, before any work; a set chunk size that does
    not fit gets a warning."""
    ds = prepared.dataset
    shape = DataShape(ds.channels, ds.image_size, ds.num_classes, len(prepared.y_train), len(prepared.y_test))

    def choose() -> list:
        available = parallel.within_budget(parallel.memory_available(team.device), budget_gb)
        choice = choose_chunk_rows(cfg, shape, ipc, available.gb, team.device.type)
        if resumed and cfg.chunk_rows != AUTO:
            choice = choice._replace(why="the run's, from its run.json")
        if choice.verdict == NEVER:
            raise RcigError(refusal(choice, available.gb))
        warning = shortfall_warning(choice, available.gb) if choice.verdict == OVER else None
        return [choice.chunk_rows, report_line(choice, available.gb, available.where), warning]

    return MemoryNote(*parallel.from_leader(choose, team))


def start_state(distiller: Distiller, run: Run, folder: RunFolder, stored: dict | None, stopper: Stopper,
                progress: bool, team: Team) -> RunState:
    """The state to step from: the folder's checkpoint when resuming one (checked against this
    run first), else a new one (initial support, tuned learning rates), checkpointed at
    iteration 0 so that a run killed from then on resumes without tuning again."""
    from rcig.crashpoints import crash_point
    from rcig.progress import Progress

    state = distiller.new_state(blank=True)  # the initial support is made below unless a checkpoint is resumed
    loaded: list[dict[str, Any]] = []

    def open_run() -> bool:  # the leader's checks (all before any write), then its writes
        checkpoint = None
        if stored:
            folder.check_same_run(run.identity, {**stored, "config": from_dict(stored["config"]).to_dict()})
            checkpoint = folder.checkpoint(lambda saved, where: check_checkpoint(distiller, saved, where))
            if checkpoint and checkpoint["iteration"] > run.cfg.steps:
                raise RcigError(f"cannot resume {folder.path} with {run.cfg.steps} steps: it is at iteration "
                                f"{checkpoint['iteration']} already (a run can be extended, not shortened)")
        folder.begin(run.identity, stored is not None, checkpoint["iteration"] if checkpoint else None)
        loaded.extend([checkpoint] if checkpoint else [])
        return bool(checkpoint)

    opened = parallel.from_leader(open_run, team)
    said = ([run.memory.line] if progress else []) + ([run.memory.warning] if run.memory.warning else [])
    if team.leader and said:  # the run's checks passed: what it will need, before the work
        print("\n".join(said), file=sys.stderr, flush=True)
    if opened:
        saved = parallel.broadcast_state(loaded[0] if team.leader else None, team)
        state.load_dict(parallel.to_device(saved, team.device))
        return state
    cfg = run.cfg
    with guarded(stopper, folder, None, 0):
        with timed() as init_cost:
            state = distiller.new_state()
        if start_images(cfg.init, run.ipc) == "herding":  # its pass over the data counts too
            folder.append_log({"iter": 0, "init": {"method": "herding", **init_cost}})
        if cfg.tunes_learning_rates and (cfg.inner_lr is None or cfg.hvp_lr is None):
            if progress:
                print("rcig: tuning the inner and H^-1 g learning rates on one network ...", file=sys.stderr)
            with timed() as tune_cost, Progress(None, "tune learning rates", "trial", enabled=progress,
                                                transient=True) as trials:
                distiller.tune(state, lambda lr: trials.update(1, lr=f"{lr:.3g}"))
            if progress:
                print(f"rcig: inner_lr={state.inner_lr:.3g} hvp_lr={state.hvp_lr:.3g}", file=sys.stderr)
            folder.append_log({"iter": 0, "tuning": {"inner_lr": state.inner_lr, "hvp_lr": state.hvp_lr, **tune_cost}})
    crash_point("tuned")
    folder.save_checkpoint(state.to_dict())
    return state


def run_loop(distiller: Distiller, state: RunState, run: Run, folder: RunFolder, loop: Loop, stopper: Stopper,
             team: Team) -> None:
    """Step ``state`` to ``run.cfg.steps``: log each step, write the checkpoint sets, evaluate,
    checkpoint; after each step every rank agrees on whether to stop (a signal, the budget)
    and on the support being the same (:func:`rcig.parallel.step_control`)."""
    from rcig.crashpoints import crash_point
    from rcig.progress import Progress

    cfg, started, first_step = run.cfg, time.perf_counter(), state.iteration
    if parallel.step_control(team, state.iteration, parallel.checksum(state.support), stopper.requested(),
                             False).interrupted:  # a signal during the setup: its checkpoint is on disk
        raise interrupted(stopper, folder, f"at iteration {state.iteration}, its checkpoint saved")
    if anneals_to_the_end(cfg) and not state.anneal_end and loop.max_minutes is None:
        state.anneal_end = max(cfg.steps, cfg.proto_lr_boost_steps + 1)  # a run of a step count ends at it
    total = None if cfg.steps == UNTIL_BUDGET else cfg.steps  # a budgeted run: a count, no percentage
    deadline = loop.began + 60 * loop.max_minutes if loop.max_minutes is not None else None
    bar = Progress(total, f"rcig {run.identity['dataset']} ipc={run.ipc}", "step", enabled=loop.progress,
                   initial=state.iteration, interval=0, deadline=deadline)  # a plain line per step: steps take seconds
    with bar:
        while state.iteration < cfg.steps:
            before = state.to_dict()  # references, no copies: a step replaces the state's parts
            with guarded(stopper, folder, before, state.iteration):
                record = distiller.step(state)
            crash_point("stepped")
            bar.update(1, **{"loss": f"{record['outer_loss']:.3f}", "outer-batch acc": f"{record['outer_acc']:.3f}"})
            folder.append_log(record)
            crash_point("logged")
            if state.iteration in cfg.checkpoint_iters:
                folder.save_set(distilled_set(state, distiller, run), f"checkpoints/iter_{state.iteration}.safetensors")
            if loop.evaluate and state.iteration % loop.eval_every == 0:
                log_evaluation(loop.evaluate, state, distiller, folder, stopper, team, bar)
            if anneals_to_the_end(cfg) and not state.anneal_end and state.iteration - first_step >= PROJECTION_STEPS:
                now = time.perf_counter()
                state.anneal_end = parallel.from_leader(lambda: budget_end(
                    cfg, state.iteration, state.iteration - first_step, now - started,
                    60 * loop.max_minutes - (now - loop.began)), team)
                if team.leader and loop.progress:
                    bar.write(f"rcig: the support's learning rate anneals to {cfg.proto_lr_final:g} x proto_lr by "
                              f"step {state.anneal_end}, where the budget is projected to end")
            out_of_time = past_budget(loop.max_minutes, loop.began, started, time.perf_counter(),
                                      state.iteration - first_step)
            stop = parallel.step_control(team, state.iteration, parallel.checksum(state.support),
                                         stopper.requested(), out_of_time)
            finished = state.iteration == cfg.steps and not stop.interrupted
            if state.iteration % loop.checkpoint_every == 0 or finished or stop.interrupted or stop.out_of_time:
                saved = state.to_dict()
                folder.save_checkpoint(finished_state(saved) if finished and not loop.keep_checkpoint else saved)
            if stop.interrupted:
                raise interrupted(stopper, folder, f"after iteration {state.iteration}, its checkpoint saved")
            if stop.out_of_time:
                break


# Steps a budgeted run makes before it projects its last step from their mean time.
PROJECTION_STEPS = 10


def budget_end(cfg: Config, iteration: int, steps_done: int, loop_seconds: float, seconds_left: float) -> int:
    """The last step of a budgeted run, projected after step ``iteration`` from the
    ``steps_done`` steps its loop made in ``loop_seconds`` (:func:`rcig.timing.projected_last_step`);
    at most ``steps``, after the boost's end (the anneal follows the boost) and after this step."""
    end = projected_last_step(iteration, steps_done, loop_seconds, seconds_left)
    return max(min(end, cfg.steps), cfg.proto_lr_boost_steps + 1, iteration + 1)


@contextmanager
def guarded(stopper: Stopper, folder: RunFolder, before: dict[str, Any] | None, done: int):
    """The work that follows iteration ``done``: when a late stop signal abandons it, or it runs
    out of memory, the state ``before`` it (None: nothing to save yet) is checkpointed and the
    run ends with one message."""
    kept = f"the checkpoint holds iteration {done}" if before is not None else "no checkpoint was written yet"
    try:
        with stopper.abandonable():
            yield
    except Abandon:
        if before is not None:
            folder.save_checkpoint(before)
        raise interrupted(stopper, folder, f"in iteration {done + 1}, which was abandoned; {kept}") from None
    except (MemoryError, RuntimeError) as exc:
        if not out_of_memory(exc):
            raise
        if before is not None:
            folder.save_checkpoint(before)
        raise RcigError(f"out of memory in iteration {done + 1} ({type(exc).__name__}); {kept}. A run needs less "
                        "with a smaller --ipc or target_batch_size, smaller chunks (--set chunk_rows=K), or the "
                        "support subsampled (--set "
                        "inner_train_batch_size=K --set hinv_batch_size=K --set implicit_batch_size=K "
                        "--set direct_batch_sizes=K,null), or fewer other processes on the machine") from None


def interrupted(stopper: Stopper, folder: RunFolder, what: str) -> Interrupted:
    return Interrupted(stopper.signum or signal.SIGTERM, f"stopped by {stopper.name} {what}; {folder.resume_hint()}")


def check_checkpoint(distiller: Distiller, stored: dict[str, Any], where: str) -> None:
    """RcigError unless ``stored`` is a checkpoint of this run (structure, shapes, pool): it is
    loaded into a scratch state."""
    from rcig import validate

    scratch = distiller.new_state(blank=True)
    template = {k: v for k, v in scratch.to_dict().items() if k != "pool"}
    validate.checkpoint_like({**template, "pool": {}, "inner_outcomes": [0]}, {**stored, "pool": {}}, where)
    if stored["iteration"] < 0 or stored["inner_lr"] <= 0 or stored["hvp_lr"] <= 0 or stored["anneal_end"] < 0:
        raise RcigError(f"{where} is not a checkpoint of this run (negative iteration, learning rate or anneal end)")
    scratch.load_dict(stored, where)  # the pool's own checks


def distilled_set(state: RunState, distiller: Distiller, run: Run) -> DistilledSet:
    """The EMA support as an :class:`rcig.io.DistilledSet`."""
    from rcig.io import make_set

    support = distiller.ema.average(state.ema) if state.ema["count"] else state.support
    return make_set(run.prepared, support["x"], support["y"], ipc=run.ipc, method="rcig", seed=run.seed,
                    flip=run.cfg.flip, protocol=run.cfg.protocol(), config=run.cfg.to_dict(),
                    iteration=state.iteration, log_temp=float(support["log_temp"]))


def periodic_evaluation(run: Run, settings, team: Team) -> Callable[[dict], dict]:
    """The scores of a support (``{"x", "y", ...}``) on the run's test set, put in model space
    for each evaluation and let go after it; ``settings`` default to one network with
    augmentation only: a cheap trend line, not the full protocol."""
    from rcig.evaluation import ProtocolSettings, evaluate_support

    cfg = run.cfg
    settings = settings or ProtocolSettings(depth=cfg.depth, width=cfg.width, n_models=1, settings=("aug",),
                                            augmentations=tuple(cfg.test_augmentations))

    def evaluate(support: dict) -> dict:
        return evaluate_support(support["x"], support["y"], run.prepared.test_images(), run.prepared.y_test, settings,
                                flip=cfg.flip, progress=False, team=team)

    return evaluate


def log_evaluation(evaluate: Callable[[dict], dict], state: RunState, distiller: Distiller, folder: RunFolder,
                   stopper: Stopper, team: Team, bar) -> None:
    """Score the EMA support, print the scores and log them (an "eval" record); a stop signal
    abandons it (the run then stops with its checkpoint)."""
    started = time.perf_counter()
    try:
        with stopper.abandonable():
            scores = evaluate(distiller.ema.average(state.ema))
    except Abandon:
        return
    if team.leader:
        bar.write(f"rcig: iteration {state.iteration}: " + ", ".join(
            f"{k} {v['mean']:.4f}" for k, v in scores.items() if isinstance(v, dict) and "mean" in v))
    folder.append_log({"iter": state.iteration, "eval": scores, "eval_seconds": round(time.perf_counter() - started, 1)})


__all__ = ["DEFAULTS", "Loop", "QUICK_STEPS", "Run", "UNTIL_BUDGET", "distill", "distilled_set",
           "resolve_config", "run_loop"]
