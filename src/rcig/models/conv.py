"""The paper's ConvNet ("Conv"): depth x [3x3 conv, norm, activation, 2x2 average pool].

Block i has ``width * 2**i`` channels (docs/algorithm.md, "The network"), or ``width`` with
``constant_width=True`` (the ConvNet of Distribution Matching and its family). For 1-channel
input the first conv pads by 3 instead of 1, so 28 px becomes 32 px (and 8 px becomes 12 px)
and the pools divide evenly. Features are the flattened last block; ``classifier`` maps them to logits.

Also here: :class:`Classifier`, the ``features -> classifier`` tail every network shares, and
:class:`PlainNorm` / :func:`plain_norms`, the norms forward-mode AD can follow.
"""

from __future__ import annotations

import torch
from torch import nn


def make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    raise ValueError(f"unknown norm {norm!r}")


def make_activation(activation: str, beta: float) -> nn.Module:
    if activation == "relu":
        return nn.ReLU()
    if activation == "softplus":
        # softplus(beta z) / beta in one kernel (linear above beta z = 20, exact in float32)
        return nn.Softplus(beta=beta, threshold=20.0)
    raise ValueError(f"unknown activation {activation!r}")


class Classifier(nn.Module):
    """A network ``x -> features(x) (N, D) -> classifier -> logits (N, C)``.

    Subclasses define :meth:`features` and a final ``nn.Linear`` named ``classifier``;
    ``forward(x, return_features=True)`` returns ``(logits, features)``.
    """

    classifier: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def feature_dim(self) -> int:
        """D, the width of the features the classifier reads."""
        return self.classifier.in_features

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


class ConvNet(Classifier):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128,
                 activation: str = "relu", beta: float = 60.0, norm: str = "none", constant_width: bool = False):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for i in range(depth):
            padding = 3 if (i == 0 and in_channels == 1) else 1
            out = width if constant_width else width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, padding=padding), make_norm(norm, out),
                       make_activation(activation, beta), nn.AvgPool2d(2)]
            channels, size = out, (size + 2 * padding - 2) // 2
            if size < 1:
                raise ValueError(f"{image_size} px is too small for depth {depth}")
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class PlainNorm(nn.Module):
    """Batch or instance norm from plain tensor ops, so forward-mode AD and traced JVPs
    follow it (torch's fused kernels give tangents that later views reject)::

        (x - mean) / sqrt(var + eps) * weight + bias      per channel

    with mean/var over (batch, height, width) for batch norm, (height, width) for
    instance norm. Batch norm always uses the statistics of the batch it sees (no running
    averages), as a network in training mode does.
    """

    def __init__(self, channels: int, over_batch: bool, eps: float = 1e-5):
        super().__init__()
        self.dims, self.eps = ((0, 2, 3) if over_batch else (2, 3)), eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=self.dims, keepdim=True)
        var = centred.square().mean(dim=self.dims, keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


def plain_norms(model: nn.Module) -> nn.Module:
    """Replace the batch and instance norms of ``model`` by :class:`PlainNorm` (same parameter names).

    During distillation a network is then a pure function of (parameters, images): the
    support is normalised with its own statistics and a target batch with its own. Nothing
    is mutated inside the JVPs and a checkpoint needs no buffers.
    """
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                setattr(module, name, PlainNorm(child.num_features, True, child.eps))
            elif isinstance(child, nn.GroupNorm) and child.num_groups == child.num_channels:
                setattr(module, name, PlainNorm(child.num_channels, False, child.eps))
    return model
