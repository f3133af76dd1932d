"""Baselines scored under the same protocol as distilled sets.

* ``random_real``: ``ipc`` seeded random training images per class.
* ``herding``: per class, the images whose running mean best tracks the class mean in a
  random ConvNet's features (:func:`rcig.data.sampling.herding_per_class`; the same
  selection that ``init="herding"`` starts a distillation from).
* ``dm``: Distribution Matching (:mod:`rcig.evaluation.dm`) from the random-real images, a peer
  method: images optimised, not chosen, for a number of iterations or a wall-clock budget.
* ``baseline_support``: random or herding by name (``SELECTIONS``), checking first that
  herding's network takes the images (``rcig eval --compare`` scores it beside a set);
  ``baseline_set``: any of ``BASELINES`` as a set file's :class:`rcig.io.DistilledSet`
  (``rcig baseline``), with what it cost (wall and CPU seconds, data loading included).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rcig.config import depth_for_image_size, paper_preset
from rcig.data.sampling import centred_one_hot, herding_per_class, sample_per_class
from rcig.evaluation.dm import DMProgress, DMResult, DMSettings, DMState, distribution_matching

if TYPE_CHECKING:
    from rcig.io import DistilledSet

SELECTIONS = ("random", "herding")  # real images, chosen: cheap enough to make beside any eval
BASELINES = (*SELECTIONS, "dm")


def random_real(prepared, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (C*ipc, ch, H, W), centred one-hot labels), class-ordered."""
    k = prepared.dataset.num_classes
    index = sample_per_class(prepared.y_train, k, ipc, torch.Generator().manual_seed(seed),
                             prepared.dataset.class_names)
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)


def herding(prepared, ipc: int, seed: int, depth: int | None = None,
            device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, centred one-hot labels) of :func:`rcig.data.sampling.herding_per_class`, class-ordered."""
    k = prepared.dataset.num_classes
    depth = depth or depth_for_image_size(prepared.dataset.image_size)
    index = herding_per_class(prepared.x_train, prepared.y_train, k, ipc, seed, depth,
                              prepared.dataset.class_names, device)
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)


def dm(prepared, ipc: int, seed: int, settings: DMSettings = DMSettings(), *, max_minutes: float | None = None,
       began: float | None = None, progress: bool = False, device: torch.device = torch.device("cpu"),
       **going_on) -> DMResult:
    """Distribution Matching (:func:`rcig.evaluation.dm.distribution_matching`, which takes
    ``going_on``: start, keep, keep_every) from the random-real images of ``seed`` and their
    centred one-hot labels, ``ipc`` per class, class-ordered."""
    images, labels = random_real(prepared, ipc, seed)
    return distribution_matching(prepared, images, labels, seed, settings, max_minutes=max_minutes, began=began,
                                 progress=progress, device=device, **going_on)


class DMFile:
    """The file in which ``rcig baseline --method dm`` keeps its progress (``OUT.partial.pt``),
    so that the same command run again after a kill goes on where the file stands, with the
    budget that is left; removed once the set is written. It holds the run's identity (dataset,
    ipc, seed, DM's settings but the iteration count), a :class:`DMProgress` and the CPU
    seconds spent, saved with ``torch.save`` and read back with ``weights_only=True``."""

    def __init__(self, out: str | Path, identity: dict):
        self.path = self.beside(out)
        self.identity = json.dumps(identity, sort_keys=True)

    @staticmethod
    def beside(out: str | Path) -> Path:
        """The progress file of the set ``out``."""
        return Path(str(out) + ".partial.pt")

    def load(self) -> tuple[DMProgress, float] | None:
        """(the progress, the CPU seconds spent) kept by an earlier call of this run, or None."""
        from rcig.errors import RcigError

        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, weights_only=True, map_location="cpu")
            kept = json.loads(saved["identity"])
        except Exception as exc:  # noqa: BLE001 - torn, or not ours: say so, do not guess
            raise RcigError(f"{self.path} is not a DM run's progress ({type(exc).__name__}); delete it to start "
                            "over") from None
        if saved["identity"] != self.identity:
            wanted = json.loads(self.identity)
            changed = sorted(k for k in set(kept) | set(wanted) if kept.get(k) != wanted.get(k))
            raise RcigError(f"{self.path} holds an unfinished DM run with another {', '.join(changed)}; run that "
                            "command again to finish it, or delete the file to start over")
        state = DMState(saved["images"], saved["velocity"], int(saved["iteration"]))
        progress = DMProgress(state, saved["generator"], saved["losses"].tolist(), float(saved["seconds"]))
        return progress, float(saved["cpu_seconds"])

    def save(self, progress: DMProgress, cpu_seconds: float) -> None:
        from rcig.atomic import atomic_write

        data = {"identity": self.identity, "images": progress.state.images.detach().cpu(),
                "velocity": progress.state.velocity.detach().cpu(), "iteration": progress.state.iteration,
                "generator": progress.generator, "losses": torch.tensor(progress.losses, dtype=torch.float64),
                "seconds": progress.seconds, "cpu_seconds": cpu_seconds}
        atomic_write(self.path, lambda fh: torch.save(data, fh))



def baseline_support(prepared, method: str, ipc: int, seed: int,
                     device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the ``SELECTIONS`` set ``method``, ``ipc`` per class (herding embeds
    the images on ``device``, after checking that its network takes them: a one-line error)."""
    if method not in SELECTIONS:
        raise ValueError(f"baseline_support makes {SELECTIONS}, not {method!r}")
    if method == "herding":  # features from a random ConvNet of the dataset's depth
        from rcig import validate

        size = prepared.dataset.image_size
        validate.network_fits("conv", prepared.dataset.channels, size, depth_for_image_size(size), prepared.dataset.spec)
        return herding(prepared, ipc, seed, device=device)
    return random_real(prepared, ipc, seed)


def baseline_set(spec: str, ipc: int, *, method: str, seed: int, data_dir: str | None = None,
                 device: str = "cpu", steps: int | None = None, max_minutes: float | None = None,
                 progress: bool = False, keep_beside: str | Path | None = None,
                 keeps: bool = True) -> DistilledSet:
    """A ``BASELINES`` set of ``ipc`` images per class of dataset ``spec``, with the protocol of
    the paper's preset for its shape, computed on ``device``; its meta records ``cost`` (wall
    and CPU seconds). DM (``method="dm"``) runs ``steps`` iterations (None: the paper's) or
    until ``max_minutes`` have passed, records them under ``dm`` and embeds with the paper's
    ConvNet at the protocol's depth; the others take neither.

    ``keep_beside`` (DM only; the set's output path): go on from the :class:`DMFile` beside
    it if an earlier call left one (its time and cost counted in, the budget too), and, when
    ``keeps``, keep the progress there about once a minute (the caller removes it once the
    set is written) and on a stop signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1: a scheduler's
    preemption), after the iteration in flight: then
    :class:`rcig.run.interrupts.Interrupted` says where the progress is and how to go on."""
    from rcig import parallel, validate
    from rcig.data import prepare
    from rcig.errors import RcigError
    from rcig.io import make_set
    from rcig.run.interrupts import Interrupted, stop_on_signals
    from rcig.timing import Stopwatch

    clock, began = Stopwatch(), time.perf_counter()
    if method not in BASELINES:
        raise RcigError(f"unknown baseline method '{method}'; choose from {', '.join(BASELINES)}")
    if method != "dm" and (steps is not None or max_minutes is not None):
        raise RcigError(f"--steps and --max-minutes apply to --method dm, not {method}")
    validate.minutes(max_minutes)
    prepared = prepare(spec, data_dir)
    size, channels = prepared.dataset.image_size, prepared.dataset.channels
    protocol = paper_preset(size, channels).protocol()
    on = parallel.resolve_device(str(device))
    extra = {}
    if method == "dm":
        settings = DMSettings(depth=protocol["depth"])
        settings = settings._replace(iterations=steps) if steps is not None else settings
        validate.network_fits("conv", channels, size, settings.depth, prepared.dataset.spec)
        going_on, before = {}, {"seconds": 0.0, "cpu_seconds": 0.0}
        if keep_beside is not None:
            identity = {"dataset": prepared.dataset.spec, "ipc": ipc, "seed": seed,
                        **{k: list(v) if isinstance(v, tuple) else v for k, v in settings._asdict().items()
                           if k != "iterations"}}
            kept = DMFile(keep_beside, identity)
            loaded = kept.load()
            if loaded is not None:
                going_on["start"], before["cpu_seconds"] = loaded
                before["seconds"] = going_on["start"].seconds
                if progress:
                    print(f"rcig: going on from {kept.path}: iteration {going_on['start'].state.iteration}, "
                          f"{before['seconds'] / 60:.1f} min spent", file=sys.stderr)
            if keeps:
                going_on["keep"] = lambda p: kept.save(p, before["cpu_seconds"] + clock.total()["cpu_seconds"])
        with contextlib.ExitStack() as stack:
            if "keep" in going_on:  # a stop signal keeps the progress after the iteration in flight
                stopper = stack.enter_context(stop_on_signals(may_abandon=False, announce=progress))
                going_on["stop"] = stopper.requested
            result = dm(prepared, ipc, seed, settings, max_minutes=max_minutes, began=began, progress=progress,
                        device=on, **going_on)
        if result.stopped:
            raise Interrupted(stopper.signum, f"stopped by {stopper.name} at iteration {result.iterations}; "
                              f"its progress is in {kept.path}: the same command run again goes on from there")
        images, labels = result.images, result.labels
        # iterations done (and asked for), the budget, the last loss, the hyperparameters
        extra["dm"] = {**settings._asdict(), "iterations": result.iterations, "max_iterations": settings.iterations,
                       "max_minutes": max_minutes, "final_loss": result.losses[-1],
                       "augmentations": list(settings.augmentations)}
        cost = {k: round(v + before[k], 3) for k, v in clock.total().items()}  # earlier calls' included
    else:
        images, labels = baseline_support(prepared, method, ipc, seed, device=on)
        cost = clock.total()
    return make_set(prepared, images, labels, ipc=ipc, method=method, seed=seed, flip=False, protocol=protocol,
                    cost=cost, **extra)
