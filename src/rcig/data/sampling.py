"""Support sets drawn from real data: per-class members, seeded per-class samples, herding, labels.

Shared by the distillation's initial support (:func:`rcig.algorithm.outer.init_support`,
drawing from the run's generator, or herding with the run's seed) and the random-real and
herding baselines (:mod:`rcig.evaluation.baselines`, seeded with the baseline's seed).

Herding (Welling, 2009): per class, greedily pick the images whose running mean best
matches the class mean in the feature space of a fixed, randomly initialised ConvNet
(ReLU, width 128, seeded) of the paper's depth for the image size
(:func:`rcig.config.depth_for_image_size`): features phi, class mean mu; pick
i_k = argmin_i || mu - (sum_{j<k} phi_{i_j} + phi_i) / k ||.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rcig.config import depth_for_image_size
from rcig.errors import RcigError


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """one_hot(labels) - 1/C, the paper's label encoding (N, C) float32 (also the support's init)."""
    return torch.nn.functional.one_hot(labels, num_classes).float() - 1.0 / num_classes


def class_members(y: torch.Tensor, num_classes: int, ipc: int,
                  class_names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """The indices of each class's rows of ``y``; an RcigError if ipc < 1 or a class has
    fewer than ``ipc`` rows (named by ``class_names`` if given, else by its index)."""
    if ipc < 1:
        raise RcigError(f"ipc must be a positive integer, got {ipc}")
    members = [(y == c).nonzero().squeeze(1) for c in range(num_classes)]
    for c, m in enumerate(members):
        if len(m) < ipc:
            name = class_names[c] if class_names is not None else c
            raise RcigError(f"ipc={ipc} is larger than class '{name}', which has {len(m)} training images")
    return members


def sample_per_class(y: torch.Tensor, num_classes: int, ipc: int, generator: torch.Generator,
                     class_names: Sequence[str] | None = None) -> torch.Tensor:
    """``ipc`` random row indices per class, class-ordered (C * ipc,): for c = 0, 1, ...
    the first ``ipc`` of a ``randperm`` of the class's members, drawn from ``generator``."""
    members = class_members(y, num_classes, ipc, class_names)
    return torch.cat([m[torch.randperm(len(m), generator=generator)[:ipc]] for m in members])


@torch.inference_mode()
def embed(x: torch.Tensor, seed: int, depth: int, batch: int = 1024,
          device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Features of a fixed random ReLU ConvNet (seeded on the CPU, run on ``device``), in batches."""
    from rcig.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("conv", in_channels=x.shape[1], num_classes=2, image_size=x.shape[2], depth=depth)
    net = net.eval().to(device)
    return torch.cat([net(x[i:i + batch].to(device), return_features=True)[1] for i in range(0, len(x), batch)])


def herding_select(features: torch.Tensor, ipc: int) -> torch.Tensor:
    """Indices of ``ipc`` rows chosen greedily so their running mean tracks the mean."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    chosen: list[int] = []
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    for k in range(1, ipc + 1):
        distance = ((mu - (total + features) / k) ** 2).sum(1)
        distance[~available] = float("inf")
        i = int(distance.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen)


def herding_per_class(x: torch.Tensor, y: torch.Tensor, num_classes: int, ipc: int, seed: int,
                      depth: int | None = None, class_names: Sequence[str] | None = None,
                      device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """``ipc`` herded row indices per class, class-ordered (C * ipc,), in the features of the
    random ConvNet of ``seed`` and ``depth`` (None: the paper's depth for the image size)."""
    depth = depth or depth_for_image_size(x.shape[-1])
    members = class_members(y, num_classes, ipc, class_names)
    return torch.cat([m[herding_select(embed(x[m], seed, depth, device=device), ipc).to(m.device)]
                      for m in members])


__all__ = ["centred_one_hot", "class_members", "embed", "herding_per_class", "herding_select", "sample_per_class"]
