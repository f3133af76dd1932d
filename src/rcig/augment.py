"""Batched, seeded data augmentation: each image gets ONE transform drawn from a list.

Used by the evaluation protocol (``rcig.evaluation`` re-exports it). The names are
``rcig.config.AUGMENTATIONS``, the protocol's default list
``rcig.config.TEST_AUGMENTATIONS``.

Transforms, with the magnitudes of the reference release's evaluation (its augmax settings):

* ``flip``      horizontal flip
* ``color``     brightness + U(-0.25, 0.25), then contrast and saturation each scaled by a
                log-uniform factor in [e^-0.25, e^0.25]
* ``crop``      random-sized crop: zoom in by a log-uniform factor in [1, 1.25] at a random place
* ``rotate``    rotation by U(-15, 15) degrees
* ``translate`` shift by up to 12.5% of the side in x and y
* ``cutout``    zero one square of a quarter of the side, placed wholly inside the image

``augment_alike`` instead draws ONE transform and ONE set of its parameters for several
batches at once (the Siamese augmentation of distribution matching, :mod:`rcig.evaluation.dm`).

Geometric transforms share one ``affine_grid`` / ``grid_sample`` call (bilinear, zero fill),
so they only mix pixel values with each other and with 0: their output lies within
``[min(x.min(), 0), max(x.max(), 0)]``. ``color`` deliberately changes the range.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rcig.config import AUGMENTATIONS

GEOMETRIC = ("crop", "rotate", "translate")


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _log_uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return _uniform(n, math.log(low), math.log(high), g).exp()


def affine_params(op: str, n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) affine matrices in normalised coordinates for one geometric transform."""
    theta = torch.zeros(n, 2, 3)
    if op == "rotate":
        angle = _uniform(n, -15.0, 15.0, g) * math.pi / 180
        theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
        theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    elif op == "translate":
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = _uniform(2 * n, -0.25, 0.25, g).view(n, 2)  # 2 * 12.5% in [-1, 1] units
    elif op == "crop":
        scale = 1.0 / _log_uniform(n, 1.0, 1.25, g)  # sample a window of side `scale`
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        room = 1.0 - scale
        theta[:, 0, 2] = (2 * torch.rand(n, generator=g) - 1) * room
        theta[:, 1, 2] = (2 * torch.rand(n, generator=g) - 1) * room
    return theta


def color_factors(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(brightness shift, contrast factor, saturation factor), each (n,), drawn in that order."""
    brightness = _uniform(n, -0.25, 0.25, g)
    contrast = _log_uniform(n, math.exp(-0.25), math.exp(0.25), g)
    return brightness, contrast, _log_uniform(n, math.exp(-0.25), math.exp(0.25), g)


def apply_color(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                saturation: torch.Tensor) -> torch.Tensor:
    """Brightness, then contrast (about the image mean), then saturation (about each pixel's
    channel mean), on normalised images; each factor (n,) or (1,) (one for every image)."""

    def per_image(values: torch.Tensor) -> torch.Tensor:  # drawn on the CPU generator, used on x's device
        return values.view(-1, 1, 1, 1).to(x.device)

    x = x + per_image(brightness)
    mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean_all) * per_image(contrast) + mean_all
    mean_c = x.mean(dim=1, keepdim=True)
    return (x - mean_c) * per_image(saturation) + mean_c


def color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """:func:`apply_color` with factors drawn for each image."""
    return apply_color(x, *color_factors(x.shape[0], g))


def cutout_corners(n: int, h: int, w: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(top, left), each (n,): where :func:`apply_cutout`'s rectangles start."""
    side_h, side_w = max(1, h // 4), max(1, w // 4)
    top = torch.randint(0, h - side_h + 1, (n,), generator=g)
    return top, torch.randint(0, w - side_w + 1, (n,), generator=g)


def apply_cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero an (h//4, w//4) rectangle at (top, left) of each image ((n,) or (1,) corners)."""
    _, _, h, w = x.shape
    side_h, side_w = max(1, h // 4), max(1, w // 4)
    top, left = top.view(-1, 1, 1).to(x.device), left.view(-1, 1, 1).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def cutout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Zero an (h//4, w//4) rectangle at a uniformly random place wholly inside each image."""
    return apply_cutout(x, *cutout_corners(x.shape[0], x.shape[2], x.shape[3], g))


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its (n, 2, 3) affine ``theta`` (bilinear, zero fill)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_batch(x: torch.Tensor, names: tuple[str, ...] | list[str], generator: torch.Generator) -> torch.Tensor:
    """Apply one transform per image, drawn uniformly from ``names``. x: (N, C, H, W)."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; choose from {AUGMENTATIONS}")
    if not names or x.shape[0] == 0:
        return x
    choice = torch.randint(0, len(names), (x.shape[0],), generator=generator)
    out = x.clone()
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    geometric = torch.zeros(x.shape[0], dtype=torch.bool)
    for i, name in enumerate(names):
        rows = (choice == i).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        if name in GEOMETRIC:
            theta[rows] = affine_params(name, len(rows), generator)
            geometric[rows] = True
        elif name == "flip":
            out[rows] = x[rows].flip(-1)
        elif name == "color":
            out[rows] = color(x[rows], generator)
        elif name == "cutout":
            out[rows] = cutout(x[rows], generator)
    if geometric.any():
        rows = geometric.nonzero().squeeze(1)
        out[rows] = warp(x[rows], theta[rows])
    return out


def augment_alike(batches: list[torch.Tensor], names: tuple[str, ...] | list[str],
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One transform drawn uniformly from ``names``, with ONE draw of its parameters, applied
    to every image of every batch (a Siamese augmentation: real and synthetic images seen
    through the same transform). Differentiable in the images."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown or not names:
        raise ValueError(f"unknown augmentation(s) {unknown or names}; choose from {AUGMENTATIONS}")
    name = names[int(torch.randint(0, len(names), (1,), generator=generator))]
    if name == "flip":
        return [x.flip(-1) for x in batches]
    if name in GEOMETRIC:
        theta = affine_params(name, 1, generator)
        return [warp(x, theta.expand(x.shape[0], 2, 3)) for x in batches]
    if name == "color":
        factors = color_factors(1, generator)
        return [apply_color(x, *factors) for x in batches]
    h, w = batches[0].shape[2:]  # cutout
    corners = cutout_corners(1, h, w, generator)
    return [apply_cutout(x, *corners) for x in batches]
