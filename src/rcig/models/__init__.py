"""Networks: the paper's ConvNet family and three cross-architecture evaluators.

    build_model("conv", in_channels=1, num_classes=10, image_size=28)   # depth 3, width 128
    build_model("resnet18" | "vgg11" | "alexnet", in_channels=3, num_classes=10, image_size=32)

Every model returns logits (N, C), or ``(logits, features)`` with ``return_features=True``,
and names its final layer ``classifier``.
"""

from __future__ import annotations

from torch import nn

from rcig.errors import RcigError
from rcig.models.conv import ConvNet
from rcig.models.others import AlexNet, ResNet18, VGG11

ARCHITECTURES = ("conv", "resnet18", "vgg11", "alexnet")


def build_model(arch: str, *, in_channels: int, num_classes: int, image_size: int, depth: int = 3,
                width: int = 128, activation: str = "relu", beta: float = 60.0, norm: str = "none") -> nn.Module:
    if arch == "conv":
        if activation not in ("relu", "softplus"):
            raise RcigError(f"unknown activation '{activation}'; choose relu or softplus")
        if norm not in ("none", "batch", "instance"):
            raise RcigError(f"unknown norm '{norm}'; choose none, batch or instance")
        return ConvNet(in_channels, num_classes, image_size, depth, width, activation, beta, norm)
    others = {"resnet18": ResNet18, "vgg11": VGG11, "alexnet": AlexNet}
    if arch not in others:
        raise RcigError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
    return others[arch](in_channels, num_classes, image_size)


__all__ = ["ARCHITECTURES", "AlexNet", "ConvNet", "ResNet18", "VGG11", "build_model"]
