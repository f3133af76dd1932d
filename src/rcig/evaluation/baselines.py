"""Baselines scored under the same protocol as distilled sets.

* ``random_real``: ``ipc`` seeded random training images per class.
* ``herding``: per class, greedily pick the images whose running mean best matches the
  class mean (Welling, 2009) in the feature space of a fixed, randomly initialised ConvNet
  (ReLU, width 128, seeded) of the preset's depth for the image size
  (:func:`rcig.config.depth_for_image_size`): features phi, class mean mu; pick
  i_k = argmin_i || mu - (sum_{j<k} phi_{i_j} + phi_i) / k ||.
"""

from __future__ import annotations

import torch

from rcig.config import depth_for_image_size
from rcig.data.sampling import centred_one_hot, class_members, sample_per_class


def random_real(prepared, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (C*ipc, ch, H, W), centred one-hot labels), class-ordered."""
    k = prepared.dataset.num_classes
    index = sample_per_class(prepared.y_train, k, ipc, torch.Generator().manual_seed(seed),
                             prepared.dataset.class_names)
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)


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


def herding(prepared, ipc: int, seed: int, depth: int | None = None,
            device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    k = prepared.dataset.num_classes
    members = class_members(prepared.y_train, k, ipc, prepared.dataset.class_names)
    depth = depth or depth_for_image_size(prepared.dataset.image_size)
    index = []
    for m in members:
        feats = embed(prepared.x_train[m], seed, depth, device=device)
        index.append(m[herding_select(feats, ipc)])
    index = torch.cat(index)
    return prepared.x_train[index].clone(), centred_one_hot(prepared.y_train[index], k)
