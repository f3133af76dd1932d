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

import time
from typing import TYPE_CHECKING

import torch

from rcig.config import depth_for_image_size, paper_preset
from rcig.data.sampling import centred_one_hot, herding_per_class, sample_per_class
from rcig.evaluation.dm import DMResult, DMSettings, distribution_matching

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
       began: float | None = None, progress: bool = False, device: torch.device = torch.device("cpu")) -> DMResult:
    """Distribution Matching (:func:`rcig.evaluation.dm.distribution_matching`) from the random-real
    images of ``seed`` and their centred one-hot labels, ``ipc`` per class, class-ordered."""
    images, labels = random_real(prepared, ipc, seed)
    return distribution_matching(prepared, images, labels, seed, settings, max_minutes=max_minutes, began=began,
                                 progress=progress, device=device)


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
                 progress: bool = False) -> DistilledSet:
    """A ``BASELINES`` set of ``ipc`` images per class of dataset ``spec``, with the protocol of
    the paper's preset for its shape, computed on ``device``; its meta records ``cost`` (wall
    and CPU seconds of this call). DM (``method="dm"``) runs ``steps`` iterations (None: the
    paper's) or until ``max_minutes`` of this call have passed, records them under ``dm`` and
    embeds with the paper's ConvNet at the protocol's depth; the others take neither."""
    from rcig import parallel, validate
    from rcig.data import prepare
    from rcig.errors import RcigError
    from rcig.io import make_set
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
        result = dm(prepared, ipc, seed, settings, max_minutes=max_minutes, began=began, progress=progress, device=on)
        images, labels = result.images, result.labels
        # iterations done (and asked for), the budget, the last loss, the hyperparameters
        extra["dm"] = {**settings._asdict(), "iterations": result.iterations, "max_iterations": settings.iterations,
                       "max_minutes": max_minutes, "final_loss": result.losses[-1],
                       "augmentations": list(settings.augmentations)}
    else:
        images, labels = baseline_support(prepared, method, ipc, seed, device=on)
    return make_set(prepared, images, labels, ipc=ipc, method=method, seed=seed, flip=False, protocol=protocol,
                    cost=clock.total(), **extra)
