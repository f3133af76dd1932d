"""Baselines scored under the same protocol as distilled sets.

* ``random_real``: ``ipc`` seeded random training images per class.
* ``herding``: per class, the images whose running mean best tracks the class mean in a
  random ConvNet's features (:func:`rcig.data.sampling.herding_per_class`; the same
  selection that ``init="herding"`` starts a distillation from).
* ``baseline_support``: either one by name (``BASELINES``), checking first that herding's
  network takes the images; ``baseline_set``: that as a set file's :class:`rcig.io.DistilledSet`
  (``rcig baseline``; ``rcig eval --compare`` scores the support itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rcig.config import depth_for_image_size, paper_preset
from rcig.data.sampling import centred_one_hot, herding_per_class, sample_per_class

if TYPE_CHECKING:
    from rcig.io import DistilledSet

BASELINES = ("random", "herding")


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


def baseline_support(prepared, method: str, ipc: int, seed: int,
                     device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the ``BASELINES`` set ``method``, ``ipc`` per class (herding embeds
    the images on ``device``, after checking that its network takes them: a one-line error)."""
    if method == "herding":  # features from a random ConvNet of the dataset's depth
        from rcig import validate

        size = prepared.dataset.image_size
        validate.network_fits("conv", prepared.dataset.channels, size, depth_for_image_size(size), prepared.dataset.spec)
        return herding(prepared, ipc, seed, device=device)
    return random_real(prepared, ipc, seed)


def baseline_set(spec: str, ipc: int, *, method: str, seed: int, data_dir: str | None = None,
                 device: str = "cpu") -> DistilledSet:
    """A random-real or herding set of ``ipc`` images per class of dataset ``spec``, with the
    protocol of the paper's preset for its shape (herding embeds the images on ``device``)."""
    from rcig import parallel
    from rcig.data import prepare
    from rcig.io import make_set

    prepared = prepare(spec, data_dir)
    images, labels = baseline_support(prepared, method, ipc, seed, device=parallel.resolve_device(str(device)))
    size, channels = prepared.dataset.image_size, prepared.dataset.channels
    return make_set(prepared, images, labels, ipc=ipc, method=method, seed=seed, flip=False,
                    protocol=paper_preset(size, channels).protocol())
