"""Support sets drawn from real data: per-class members, seeded per-class samples, labels.

Shared by the distillation's initial support (:func:`rcig.algorithm.outer.init_support`,
drawing from the run's generator) and the random-real and herding baselines
(:mod:`rcig.evaluation.baselines`, a fresh generator seeded with the baseline's seed).
"""

from __future__ import annotations

from typing import Sequence

import torch

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


__all__ = ["centred_one_hot", "class_members", "sample_per_class"]
