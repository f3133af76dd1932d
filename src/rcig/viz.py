"""A picture of a distilled set: one row per class, images mapped back to pixels."""

from __future__ import annotations

import os

import numpy as np
import torch


def grid_array(pixels: np.ndarray, classes: np.ndarray, num_classes: int, scale: int, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) images -> one RGB canvas, row c holding the images of class c."""
    n, h, w, c = pixels.shape
    per_row = max(1, max(int((classes == k).sum()) for k in range(num_classes)))
    cell_h, cell_w = h * scale + pad, w * scale + pad
    canvas = np.full((num_classes * cell_h + pad, per_row * cell_w + pad, 3), 255, np.uint8)
    filled = [0] * num_classes
    for img, k in zip(pixels, classes):
        big = img.repeat(scale, 0).repeat(scale, 1)
        big = np.repeat(big, 3, axis=2) if c == 1 else big
        top, left = pad + k * cell_h, pad + filled[k] * cell_w
        canvas[top:top + h * scale, left:left + w * scale] = big
        filled[k] += 1
    return canvas


def display_pixels(ds) -> np.ndarray:
    """uint8 (N, H, W, C) for viewing: the inverse preprocessing, or, for a set whose
    preprocessing is unknown (imported without --dataset), a min-max stretch over the set."""
    if ds.preprocessing_known:
        return ds.preprocessor().to_pixels(ds.images)
    x = ds.images.detach().float()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-12)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_grid(ds, path: str | os.PathLike, *, max_per_class: int | None = None) -> None:
    """A picture of ``ds`` (a DistilledSet; see :func:`grid_image`), written atomically in the
    format its extension names (PNG for any other)."""
    from PIL import Image

    from rcig.atomic import atomic_write

    image = grid_image(ds, max_per_class=max_per_class)
    image_format = Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower(), "PNG")
    atomic_write(path, lambda fh: image.save(fh, format=image_format))


def grid_image(ds, *, max_per_class: int | None = None):
    """PIL image of ``ds``: one row per class, class names at the left, nearest-neighbour upscaling."""
    from PIL import Image, ImageDraw

    pixels = display_pixels(ds)
    classes = ds.labels.argmax(1).numpy()
    names = ds.meta.get("class_names") or [str(i) for i in range(ds.labels.shape[1])]
    if max_per_class:
        keep = np.concatenate([np.nonzero(classes == k)[0][:max_per_class] for k in range(len(names))])
        pixels, classes = pixels[keep], classes[keep]
    scale = max(1, 64 // pixels.shape[1])
    canvas = grid_array(pixels, classes, len(names), scale)
    label_w = 8 + 7 * max(len(str(n)) for n in names)
    image = Image.new("RGB", (canvas.shape[1] + label_w, canvas.shape[0]), "white")
    image.paste(Image.fromarray(canvas), (label_w, 0))
    draw = ImageDraw.Draw(image)
    cell_h = pixels.shape[1] * scale + 2
    for k, name in enumerate(names):
        draw.text((4, 2 + k * cell_h + cell_h // 2 - 6), str(name), fill="black")
    return image
