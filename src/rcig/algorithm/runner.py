"""``rcig.distill``: a whole distillation run with its files, checkpoints and resume.

The run driver around the outer loop (:class:`rcig.algorithm.outer.Distiller`): it resolves
the config, builds the distillation network (:func:`rcig.models.distillation_network`), steps
the loop, and writes, checkpoints and resumes.

Output directory layout::

    DIR/distilled.safetensors   the EMA support (rcig.io format), written at the end
    DIR/grid.png                the distilled images, one row per class
    DIR/log.jsonl               one JSON record per iteration (+ "eval" records, and an
                                iteration-0 "tuning" record: the tuned rates, its wall and CPU seconds)
    DIR/run.json                dataset, ipc, seed, config: what --resume checks against
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
from rcig.algorithm.outer import Distiller, RunState
from rcig.atomic import atomic_write
from rcig.config import Config, default_preset_name, from_dict, load_preset
from rcig.errors import RcigError
from rcig.models import distillation_network
from rcig.parallel import Team

if TYPE_CHECKING:
    from rcig.io import DistilledSet

# Short default runs where a dataset is cheap enough to distil in minutes on a CPU.
QUICK_STEPS = {"digits": 50}


def resolve_config(dataset, preset: str | None, overrides: dict[str, Any] | None, steps: int | None) -> Config:
    """The preset (the dataset's default if None) with overrides and the step count applied."""
    name = preset or default_preset_name(dataset.image_size, dataset.channels)
    cfg = load_preset(name)
    changes = dict(overrides or {})
    if steps is not None:
        changes["steps"] = steps
    elif dataset.spec in QUICK_STEPS and "steps" not in changes:
        changes["steps"] = QUICK_STEPS[dataset.spec]
    if cfg.flip and dataset.channels == 1 and "flip" not in changes:
        changes["flip"] = False  # the flip trick is for natural RGB images only
    return cfg.replace(**changes) if changes else cfg


def protocol_defaults(cfg: Config) -> dict[str, Any]:
    """The evaluation protocol a set made with ``cfg`` is scored with by default."""
    return {"arch": "conv", "depth": cfg.depth, "width": cfg.width, "augmentations": list(cfg.test_augmentations)}


def distilled_set(state: RunState, distiller: Distiller, prepared, cfg: Config, seed: int) -> DistilledSet:
    """The EMA support as an :class:`rcig.io.DistilledSet`."""
    from rcig.io import make_set

    support = distiller.ema.average(state.ema) if state.ema["count"] else state.support
    return make_set(prepared, support["x"], support["y"], ipc=distiller.ipc, method="rcig", seed=seed,
                    flip=cfg.flip, protocol=protocol_defaults(cfg), config=cfg.to_dict(),
                    iteration=state.iteration, log_temp=float(support["log_temp"]))


def baseline_set(spec: str, ipc: int, *, method: str, seed: int, data_dir: str | None = None,
                 device: str = "cpu") -> DistilledSet:
    """A random-real or herding set of ``ipc`` images per class, with the dataset's protocol
    (herding embeds the images on ``device``)."""
    from rcig.data import prepare
    from rcig.evaluation import herding, random_real
    from rcig.io import make_set

    prepared = prepare(spec, data_dir)
    cfg = resolve_config(prepared.dataset, None, None, None)
    if method == "herding":
        images, labels = herding(prepared, ipc, seed, device=parallel.resolve_device(str(device)))
    else:
        images, labels = random_real(prepared, ipc, seed)
    return make_set(prepared, images, labels, ipc=ipc, method=method, seed=seed, flip=False,
                    protocol=protocol_defaults(cfg))


def _run_identity(dataset_spec: str, ipc: int, seed: int, cfg: Config) -> dict[str, Any]:
    return {"dataset": dataset_spec, "ipc": ipc, "seed": seed, "config": cfg.to_dict()}


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop log records past the resumed iteration, so the log matches the state."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("iter", 0) <= iteration]
    text = "".join(line + "\n" for line in keep)
    atomic_write(path, lambda fh: fh.write(text.encode()))


DEFAULTS = {"dataset": "digits", "ipc": 1, "seed": 0}


# Knobs whose default changed: the value a run.json written before them ran at.
LEGACY_DEFAULTS = {"network_init": "torch"}


def stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """The config of a stored run, knobs added since filled with what that run used."""
    return {**LEGACY_DEFAULTS, **stored["config"]}


def _stored_run(out_dir: Path | None, resume: bool) -> dict[str, Any] | None:
    if not resume:
        return None
    if out_dir is None:
        raise RcigError("--resume needs --out DIR, the directory of the run to continue")
    run_file = out_dir / "run.json"
    if not run_file.exists():
        raise RcigError(f"nothing to resume: {run_file} does not exist")
    return json.loads(run_file.read_text())


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
    as None are taken from that run; given ones must agree with it). ``max_minutes`` stops
    early (after a whole iteration, checkpointed) and writes the outputs of the run so far.
    """
    from tqdm import tqdm

    from rcig.data import prepare

    team = team or parallel.join(device)
    leader = team.leader
    progress = progress and leader
    out_dir = Path(out) if out is not None else None
    stored = parallel.from_leader(lambda: _stored_run(out_dir, resume), team)
    given = {"dataset": dataset, "ipc": ipc, "seed": seed}
    chosen = {k: v if v is not None else (stored[k] if stored else DEFAULTS[k]) for k, v in given.items()}
    dataset, ipc, seed = chosen["dataset"], chosen["ipc"], chosen["seed"]
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise RcigError(f"ipc must be a positive integer, got {ipc!r}")
    with parallel.leader_first(team):  # the others then find its downloads and caches
        prepared = prepare(dataset, data_dir)
    ds = prepared.dataset
    if stored and preset is None and not overrides:
        cfg = from_dict(stored_config(stored), where=f"{out_dir}/run.json")
        cfg = cfg.replace(steps=steps) if steps is not None else cfg  # a resumed run may be extended
    else:
        cfg = resolve_config(ds, preset, overrides, steps)
    identity = _run_identity(ds.spec, ipc, seed, cfg)

    distiller = Distiller(prepared.x_train, prepared.y_train, ds.num_classes, ipc, cfg, seed,
                          distillation_network(cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                               image_size=ds.image_size), team)
    state = distiller.new_state()
    ckpt_path = out_dir / "checkpoints" / "latest.pt" if out_dir and leader else None
    log_path = out_dir / "log.jsonl" if out_dir and leader else None

    def open_run_dir() -> bool:
        """The leader's checks and writes in ``out``; True when a checkpoint is to be resumed."""
        if out_dir is None:
            return False
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        run_file = out_dir / "run.json"
        if resume:
            if not ckpt_path.exists():
                raise RcigError(f"nothing to resume: no checkpoint at {ckpt_path}")
            now = json.loads(json.dumps(identity))
            # a knob added after the run was made ran at its default (which reproduces the old code)
            then = json.loads(json.dumps(from_dict(stored_config(stored), where=f"{out_dir}/run.json").to_dict()))
            diff = [k for k in now if k != "config" and stored.get(k) != now[k]]
            diff += [f"config.{k}" for k in now["config"] if k != "steps" and then[k] != now["config"][k]]
            if diff:
                raise RcigError(f"cannot resume {out_dir}: the run there differs in {', '.join(diff)}")
        elif ckpt_path.exists():
            raise RcigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        else:
            log_path.unlink(missing_ok=True)  # a run killed before its first checkpoint left it
        text = json.dumps(identity, indent=2) + "\n"
        atomic_write(run_file, lambda fh: fh.write(text.encode()))
        return resume

    if parallel.from_leader(open_run_dir, team):
        saved = parallel.broadcast_state(load_checkpoint(ckpt_path) if leader else None, team)
        state.load_dict(parallel.to_device(saved, team.device))
        if leader:
            _truncate_log(log_path, state.iteration)

    if state.iteration == 0 and cfg.tunes_learning_rates and (cfg.inner_lr is None or cfg.hvp_lr is None):
        if progress:
            tqdm.write("rcig: tuning the inner and H^-1 g learning rates on one network ...")
        tune_started, cpu_started = time.perf_counter(), time.process_time()
        distiller.tune(state, progress)
        if progress:
            tqdm.write(f"rcig: inner_lr={state.inner_lr:.3g} hvp_lr={state.hvp_lr:.3g}")
        if log_path is not None:  # the tuning's cost counts towards the run's (CG needs none)
            record = {"iter": 0, "tuning": {"inner_lr": state.inner_lr, "hvp_lr": state.hvp_lr,
                                            "seconds": round(time.perf_counter() - tune_started, 3),
                                            "cpu_seconds": round(time.process_time() - cpu_started, 3)}}
            _append_log(log_path, record)

    def save_latest() -> None:
        if ckpt_path is not None:
            save_checkpoint(ckpt_path, state.to_dict())

    started = time.perf_counter()
    # Rank 0 writes (ckpt_path and log_path are None elsewhere); every rank agrees, after
    # each step, on whether to stop and on the support being the same (rcig.parallel).
    bar = tqdm(total=cfg.steps, initial=state.iteration, desc=f"rcig {ds.spec} ipc={ipc}", unit="step",
               disable=not progress, dynamic_ncols=True)
    with deferred_interrupt(announce=leader) as interrupted, bar:
        while state.iteration < cfg.steps:
            record = distiller.step(state)
            bar.update(1)
            bar.set_postfix(loss=f"{record['outer_loss']:.3f}", acc=f"{record['outer_acc']:.3f}",
                            s=f"{record['seconds']:.1f}")
            if log_path is not None:
                _append_log(log_path, record)
            if out_dir is not None and leader and state.iteration in cfg.checkpoint_iters:
                _save_set(distilled_set(state, distiller, prepared, cfg, seed),
                          out_dir / "checkpoints" / f"iter_{state.iteration}.safetensors")
            if eval_every and state.iteration % eval_every == 0:
                _periodic_eval(state, distiller, prepared, cfg, seed, eval_settings, log_path)
            if state.iteration % checkpoint_every == 0 or state.iteration == cfg.steps:
                save_latest()
            out_of_time = max_minutes is not None and time.perf_counter() - started > 60 * max_minutes
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
                   log_path: Path | None) -> None:
    from tqdm import tqdm

    from rcig.evaluation import ProtocolSettings, evaluate_support

    # one network, with augmentation only: a cheap trend line, not the full protocol
    settings = settings or ProtocolSettings(depth=cfg.depth, width=cfg.width, n_models=1, settings=("aug",),
                                            augmentations=tuple(cfg.test_augmentations))
    support = distiller.ema.average(state.ema)
    started = time.perf_counter()
    scores = evaluate_support(support["x"], support["y"], prepared.x_test, prepared.y_test, settings,
                              flip=cfg.flip, progress=False, team=distiller.team)
    record = {"iter": state.iteration, "eval": scores, "eval_seconds": round(time.perf_counter() - started, 1)}
    if not distiller.team.leader:
        return
    tqdm.write(f"rcig: iteration {state.iteration}: " + ", ".join(
        f"{k} {v['mean']:.4f}" for k, v in scores.items() if isinstance(v, dict) and "mean" in v))
    if log_path is not None:
        _append_log(log_path, record)
