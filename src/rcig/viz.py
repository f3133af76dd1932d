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


# ---------------------------------------------------------------------- line charts (SVG)

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values in [low, high], about ``count`` of them: a step of 1, 2 or 5 times a
    power of ten, the one nearest (in ratio) to an even split."""
    import math

    span = high - low
    if span <= 0:
        return [low]
    raw = span / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda t: abs(math.log(t / raw)))
    first = math.ceil(low / step - 1e-9) * step
    ticks, t = [], first
    while t <= high + 1e-9 * step:
        ticks.append(round(t, 12))
        t += step
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:.3g}" if value != 0 else "0"


def svg_chart(lines: list[tuple[str, list[tuple[float, float]]]], *, title: str, x_label: str, y_label: str,
              log_y: bool = False, width: int = 520, height: int = 280) -> str:
    """A line chart as an inline ``<svg>`` element: ``lines`` is ``[(name, [(x, y), ...]), ...]``,
    drawn in order with a legend; both axes carry ticks and a label. ``log_y``: a base-10 y axis
    (non-positive values left out). No dependency beyond the standard library."""
    import html
    import math

    def fy(y):
        return math.log10(y) if log_y else y

    shown = [(name, [(float(x), float(y)) for x, y in pts if math.isfinite(y) and (y > 0 or not log_y)])
             for name, pts in lines]
    shown = [(name, pts) for name, pts in shown if pts]
    left, right, top, bottom = 64, 12, 26, 44
    inner_w, inner_h = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
           f"<title>{html.escape(title)}</title>",
           f'<text x="{left + inner_w / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#888"/>',
           f'<text x="{left + inner_w / 2}" y="{height - 6}" text-anchor="middle">{html.escape(x_label)}</text>',
           f'<text transform="translate(14 {top + inner_h / 2}) rotate(-90)" text-anchor="middle">'
           f"{html.escape(y_label)}</text>"]
    if not shown:
        out.append(f'<text x="{left + inner_w / 2}" y="{top + inner_h / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    xs = [x for _, pts in shown for x, _ in pts]
    ys = [fy(y) for _, pts in shown for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 1), y1 + (abs(y1) * 0.1 or 1)
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x):
        return left + (x - x0) / (x1 - x0) * inner_w

    def py(v):
        return top + (1 - (v - y0) / (y1 - y0)) * inner_h

    for t in nice_ticks(x0, x1, 6):
        out.append(f'<line x1="{px(t):.1f}" y1="{top + inner_h}" x2="{px(t):.1f}" y2="{top + inner_h + 4}" '
                   f'stroke="#888"/><text x="{px(t):.1f}" y="{top + inner_h + 16}" text-anchor="middle">'
                   f"{_tick_label(t)}</text>")
    if log_y:
        y_ticks = [float(p) for p in range(math.ceil(y0), math.floor(y1) + 1)] or [y0 + pad, y1 - pad]
        labels = [_tick_label(10 ** t) for t in y_ticks]
    else:
        y_ticks = nice_ticks(y0, y1, 5)
        labels = [_tick_label(t) for t in y_ticks]
    for t, label in zip(y_ticks, labels):
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + inner_w}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end">{label}</text>')
    for i, (name, pts) in enumerate(shown):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(fy(y)):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if len(pts) < 30:
            out += [f'<circle cx="{px(x):.1f}" cy="{py(fy(y)):.1f}" r="2.5" fill="{colour}"/>' for x, y in pts]
        ly = top + 14 + 14 * i
        out.append(f'<line x1="{left + 8}" y1="{ly - 4}" x2="{left + 24}" y2="{ly - 4}" stroke="{colour}" '
                   f'stroke-width="2"/><text x="{left + 28}" y="{ly}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def heat_map(values: np.ndarray, cell: int = 12):
    """PIL image of a 2-D array: red positive, blue negative, white zero (scaled by the largest
    magnitude); one ``cell`` x ``cell`` square per entry."""
    from PIL import Image

    v = np.asarray(values, dtype=np.float64)
    v = v / (np.abs(v).max() or 1.0)
    rgb = np.empty(v.shape + (3,))
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    rgb[..., 0] = 1 - neg
    rgb[..., 1] = 1 - pos - neg
    rgb[..., 2] = 1 - pos
    pixels = (rgb * 255).round().astype(np.uint8).repeat(cell, 0).repeat(cell, 1)
    return Image.fromarray(pixels)
