"""Weight initialisation schemes: torch's defaults, or the reference release's (flax's).

The reference builds every network with flax's defaults: kernels ``lecun_normal`` (a normal
distribution truncated at two standard deviations, rescaled so its variance is exactly
``1 / fan_in``) and zero biases. torch's defaults draw kernels uniformly with variance
``1 / (3 fan_in)`` and biases uniformly in ``+-1/sqrt(fan_in)``. Over a depth-3 ConvNet the
difference compounds: the feature kernel ``K = phi phi^T`` is about 3^3 = 27 times smaller
with torch's init, so RCIG's fixed ``l2_rate`` regularises its kernel ridge regression that
much harder than the reference's (see BENCHMARKS.md).

    fan_in   = in_channels * kernel_height * kernel_width    (conv)  |  in_features (dense)
    std      = sqrt(1 / fan_in) / 0.87962566103423978                (the truncation's correction)
    kernel  ~ N(0, std^2) truncated to [-2 std, 2 std]                => Var = 1 / fan_in
    bias     = 0
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rcig.config import NETWORK_INITS

# Standard deviation of a standard normal truncated to [-2, 2] (flax / JAX's constant).
_TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Fill ``weight`` (out, in, ...) in place with flax's ``lecun_normal``: variance 1/fan_in."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_STD
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def reference_init_(model: nn.Module) -> nn.Module:
    """Re-initialise every conv and dense layer of ``model`` as the reference (flax) does:
    ``lecun_normal`` kernels and zero biases. Norm layers keep weight 1, bias 0. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            lecun_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """``model`` initialised by scheme ``init`` ("reference" or "torch", which keeps torch's defaults)."""
    if init == "reference":
        return reference_init_(model)
    if init == "torch":
        return model
    raise ValueError(f"unknown init {init!r}; choose from {NETWORK_INITS}")
