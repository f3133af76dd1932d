"""Cross-architecture evaluation networks: ResNet-18, VGG-11, AlexNet, sized for 8-128 px.

Each is a :class:`rcig.models.conv.Classifier` (``features`` then a final ``classifier``
Linear), like :class:`rcig.models.conv.ConvNet`. They use batch norm (ResNet, VGG) as is usual when
scoring distilled data across architectures.
"""

from __future__ import annotations

import torch
from torch import nn

from rcig.models.conv import Classifier


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(Classifier):
    """ResNet-18 with a 3x3 stem (no max-pool) for small images; 4 stages of 2 blocks."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, c_in = [], 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)


VGG11_PLAN = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(Classifier):
    """VGG-11 with batch norm; a pooling step is skipped once the map is 1 px wide."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for item in VGG11_PLAN:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU()]
            channels = item
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


class AlexNet(Classifier):
    """A small-image AlexNet: 5 convs (64-192-384-256-256), 3 max-pools, no dropout."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int):
        super().__init__()

        def pool(size):
            return (nn.MaxPool2d(2), size // 2) if size >= 2 else (nn.Identity(), size)

        p1, s = pool(image_size)
        p2, s = pool(s)
        p3, s = pool(s)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(), p1,
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), p2,
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), p3,
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(256, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)
