"""Baselines scored under the same protocol as distilled sets.

* ``random_real``: ``ipc`` seeded random training images per class.
* ``herding``: per class, greedily pick the images whose running mean best matches the
  class mean (Welling, 2009) in the feature space of a fixed, randomly initialised ConvNet
  of the dataset's depth (ReLU, width 128, seeded): features phi, class mean mu; pick
  i_k = argmin_i || mu - (sum_{j<k} phi_{i_j} + phi_i) / k ||.
"""

from __future__ import annotations

import torch

from rcig.errors import RcigError


def centred_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """one_hot(labels) - 1/C, the paper's label encoding (N, C) float32 (also the support's init)."""
    return torch.nn.functional.one_hot(labels, num_classes).float() - 1.0 / num_classes


def _class_members(y: torch.Tensor, num_classes: int, ipc: int, names) -> list[torch.Tensor]:
    if ipc < 1:
        raise RcigError(f"ipc must be a positive integer, got {ipc}")
    members = [(y == c).nonzero().squeeze(1) for c in range(num_classes)]
    for c, m in enumerate(members):
        if len(m) < ipc:
            raise RcigError(f"ipc={ipc} is larger than class '{names[c]}', which has {len(m)} training images")
    return members


def random_real(prepared, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (C*ipc, ch, H, W), centred one-hot labels), class-ordered."""
    k = prepared.dataset.num_classes
    members = _class_members(prepared.y_train, k, ipc, prepared.dataset.class_names)
    g = torch.Generator().manual_seed(seed)
    index = torch.cat([m[torch.randperm(len(m), generator=g)[:ipc]] for m in members])
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)


@torch.inference_mode()
def embed(x: torch.Tensor, seed: int, depth: int, batch: int = 1024) -> torch.Tensor:
    """Features of a fixed random ReLU ConvNet (seeded), in batches."""
    from rcig.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("conv", in_channels=x.shape[1], num_classes=2, image_size=x.shape[2], depth=depth).eval()
    return torch.cat([net(x[i:i + batch], return_features=True)[1] for i in range(0, len(x), batch)])


def herding_select(features: torch.Tensor, ipc: int) -> torch.Tensor:
    """Indices of ``ipc`` rows chosen greedily so their running mean tracks the mean."""
    mu = features.mean(0)
    total = torch.zeros_like(mu)
    chosen: list[int] = []
    available = torch.ones(len(features), dtype=torch.bool)
    for k in range(1, ipc + 1):
        distance = ((mu - (total + features) / k) ** 2).sum(1)
        distance[~available] = float("inf")
        i = int(distance.argmin())
        chosen.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(chosen)


def herding(prepared, ipc: int, seed: int, depth: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    k = prepared.dataset.num_classes
    members = _class_members(prepared.y_train, k, ipc, prepared.dataset.class_names)
    depth = depth or (3 if prepared.dataset.image_size <= 32 else 4 if prepared.dataset.image_size <= 64 else 5)
    index = []
    for m in members:
        feats = embed(prepared.x_train[m], seed, depth)
        index.append(m[herding_select(feats, ipc)])
    index = torch.cat(index)
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)
