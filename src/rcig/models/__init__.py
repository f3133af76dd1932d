"""Networks: the paper's ConvNet family and three cross-architecture evaluators.

    build_model("conv", in_channels=1, num_classes=10, image_size=28)   # depth 3, width 128
    build_model("resnet18" | "vgg11" | "alexnet", in_channels=3, num_classes=10, image_size=32)
    distillation_network(cfg, in_channels=1, num_classes=10, image_size=28)   # a factory

Every model is a :class:`Classifier`: it returns logits (N, C), or ``(logits, features)``
with ``return_features=True``, names its final layer ``classifier`` and reports the
feature width as ``feature_dim``. ``functional_norms=True`` swaps batch and instance norms
for :class:`PlainNorm`, which the distillation's JVPs can follow.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from rcig.config import NORMS, Config
from rcig.errors import RcigError
from rcig.models.conv import Classifier, ConvNet, PlainNorm, plain_norms
from rcig.models.init import apply_init
from rcig.models.others import AlexNet, ResNet18, VGG11

ARCHITECTURES = ("conv", "resnet18", "vgg11", "alexnet")


def build_model(arch: str, *, in_channels: int, num_classes: int, image_size: int, depth: int = 3,
                width: int = 128, activation: str = "relu", beta: float = 60.0, norm: str = "none",
                constant_width: bool = False, functional_norms: bool = False) -> Classifier:
    if arch == "conv":
        if activation not in ("relu", "softplus"):
            raise RcigError(f"unknown activation '{activation}'; choose relu or softplus")
        if norm not in NORMS:
            raise RcigError(f"unknown norm '{norm}'; choose from {', '.join(NORMS)}")
        model = ConvNet(in_channels, num_classes, image_size, depth, width, activation, beta, norm, constant_width)
    else:
        others = {"resnet18": ResNet18, "vgg11": VGG11, "alexnet": AlexNet}
        if arch not in others:
            raise RcigError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHITECTURES)}")
        model = others[arch](in_channels, num_classes, image_size)
    return plain_norms(model) if functional_norms else model


def distillation_network(cfg: Config, *, in_channels: int, num_classes: int,
                         image_size: int) -> Callable[[], nn.Module]:
    """A factory of fresh distillation networks: the config's ConvNet (softplus with
    ``beta = cfg.softplus_beta``, ReLU if it is 0) with functional norms, initialised by
    ``cfg.network_init`` (the reference's flax init by default, :mod:`rcig.models.init`)."""
    activation = "softplus" if cfg.softplus_beta > 0 else "relu"

    def make_model() -> nn.Module:
        model = build_model("conv", in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                            depth=cfg.depth, width=cfg.width, activation=activation,
                            beta=cfg.softplus_beta or 60.0, norm=cfg.norm, functional_norms=True)
        return apply_init(model, cfg.network_init)

    return make_model


__all__ = ["ARCHITECTURES", "AlexNet", "Classifier", "ConvNet", "PlainNorm", "ResNet18", "VGG11", "build_model",
           "distillation_network", "plain_norms"]
