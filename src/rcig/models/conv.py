"""The paper's ConvNet ("Conv"): depth x [3x3 conv, norm, activation, 2x2 average pool].

Block i has ``width * 2**i`` channels (RCIG.md). For 1-channel input the first conv pads
by 3 instead of 1, so 28 px becomes 32 px (and 8 px becomes 12 px) and the pools divide
evenly. Features are the flattened last block; ``classifier`` maps them to logits.
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


class ConvNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int, depth: int = 3, width: int = 128,
                 activation: str = "relu", beta: float = 60.0, norm: str = "none"):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for i in range(depth):
            padding = 3 if (i == 0 and in_channels == 1) else 1
            out = width * 2 ** i
            layers += [nn.Conv2d(channels, out, 3, padding=padding), make_norm(norm, out),
                       make_activation(activation, beta), nn.AvgPool2d(2)]
            channels, size = out, (size + 2 * padding - 2) // 2
            if size < 1:
                raise ValueError(f"{image_size} px is too small for depth {depth}")
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.body(x).flatten(1)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits
