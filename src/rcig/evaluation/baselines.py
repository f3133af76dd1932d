"""Baselines scored under the same protocol as distilled sets.

* ``random_real``: ``ipc`` seeded random training images per class.
* ``herding``: per class, the images whose running mean best tracks the class mean in a
  random ConvNet's features (:func:`rcig.data.sampling.herding_per_class`; the same
  selection that ``init="herding"`` starts a distillation from).
"""

from __future__ import annotations

import torch

from rcig.config import depth_for_image_size
from rcig.data.sampling import centred_one_hot, herding_per_class, sample_per_class


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
