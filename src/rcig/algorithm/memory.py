r"""How much memory an outer step needs, estimated before a run starts.

A step keeps the support's activations for its JVPs and backward passes (the linearised
inner problem, the direct and implicit gradients), so its peak grows with the support's rows
and quadratically a little beyond. Fitted to the peak RSS that ``benchmarks/speed.py``
measured on a 2-core CPU (depth 3, width 128; 28 px gray and 32 px RGB with the flip trick;
10 to 1,000 support rows, 256 and 1,024 target rows; 1.5 to 20.4 GB, within 0.3 GB each):

    GB ~= 0.52 + a (12.2 n + 5.2 n^2 / 1000 + 4.1 t)

with ``n`` the support rows that carry gradients (flip copies included), ``t`` the target
rows of a meta-gradient and ``a`` the GB of one image's convolution outputs in float32 (0.92
MB for both shapes above). Other depths, widths and image sizes enter through ``a`` alone,
and the subsampling knobs (``inner_train_batch_size``, ``hinv_batch_size``,
``implicit_batch_size``, ``direct_batch_sizes``, ``pool_train_batch_size``) through ``n``:
both extrapolate from the fit, hence a warning rather than a refusal.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from rcig.config import Config

BASE_GB, PER_ROW, PER_ROW_SQUARED, PER_TARGET_ROW = 0.52, 12.2, 5.2e-3, 4.1
SUBSAMPLING_KNOBS = ("inner_train_batch_size", "hinv_batch_size", "implicit_batch_size", "pool_train_batch_size")


class MemoryEstimate(NamedTuple):
    gb: float  # the step's estimated peak resident memory
    support_rows: int  # n: rows carrying gradients
    target_rows: int  # t


def activation_floats(cfg: Config, in_channels: int, image_size: int, num_classes: int) -> int:
    """Floats of one image's convolution outputs in the distillation ConvNet, counted on the
    meta device (shapes only, nothing computed)."""
    from rcig.models import build_model

    counts: list[int] = []
    with torch.device("meta"):
        model = build_model("conv", in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                            depth=cfg.depth, width=cfg.width, norm=cfg.norm)
        for layer in model.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.register_forward_hook(lambda _layer, _inputs, out: counts.append(out[0].numel()))
        model(torch.empty(1, in_channels, image_size, image_size))
    return sum(counts)


def step_memory(cfg: Config, support_rows: int, in_channels: int, image_size: int, num_classes: int) -> MemoryEstimate:
    """The module docstring's estimate for a support of ``support_rows`` rows (after the flip
    trick) under ``cfg``'s subsampling knobs and target batch."""
    knobs = [getattr(cfg, k) for k in SUBSAMPLING_KNOBS] + [cfg.direct_batch_sizes[0]]
    set_knobs = [k for k in knobs if k]
    n = min(support_rows, max(set_knobs)) if set_knobs else support_rows
    t = min(cfg.target_batch_size, cfg.direct_batch_sizes[1] or cfg.target_batch_size)
    a = 4 * activation_floats(cfg, in_channels, image_size, num_classes) / 1e9
    return MemoryEstimate(BASE_GB + a * (PER_ROW * n + PER_ROW_SQUARED * n * n + PER_TARGET_ROW * t), n, t)


def available_gb(meminfo: str | Path = "/proc/meminfo") -> float | None:
    """The memory the system can give a new process now (Linux's MemAvailable), None where
    it cannot be read."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return None


def shortfall_warning(estimate: MemoryEstimate, available: float | None) -> str | None:
    """A one-line warning when the estimate exceeds the available memory, else None."""
    if available is None or estimate.gb <= available:
        return None
    return (f"rcig: warning: a step of this run may need about {estimate.gb:.0f} GB of memory "
            f"({estimate.support_rows} support rows with gradients, {estimate.target_rows} target rows) and "
            f"{available:.0f} GB are available; if the system stops it, subsample the support: "
            f"--set inner_train_batch_size=K --set hinv_batch_size=K --set implicit_batch_size=K "
            f"--set direct_batch_sizes=K,null (docs/algorithm.md: large supports), or a smaller --ipc")


__all__ = ["MemoryEstimate", "activation_floats", "available_gb", "shortfall_warning", "step_memory"]
