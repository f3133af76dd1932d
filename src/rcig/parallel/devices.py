"""Devices: which one a rank computes on, moving state trees there, and the CPU's float mode.

Random draws come from CPU generators on every device (indices and init noise are drawn on
the CPU and the results moved), so a seed gives the same draws on CPU and GPU and on any
number of ranks.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from rcig.errors import RcigError

DEVICES = "auto|cpu|cuda|cuda:K|mps"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA GPU if torch sees one, else the CPU; ``cuda`` -> GPU
    ``local_rank``; ``cuda:K``, ``mps``, ``cpu`` as given. An unusable choice is an RcigError.

    ``auto`` does not pick Apple's ``mps``: the distillation's float64 checksums and some of
    its linear algebra are not supported there, so it is opt-in (and untested here).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise RcigError("--device mps: this torch sees no Apple GPU")
        return torch.device("mps")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise RcigError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__})")
        k = int(index) if index else local_rank
        if k >= torch.cuda.device_count():
            raise RcigError(f"--device {name}: GPU {k} does not exist ({torch.cuda.device_count()} visible)")
        return torch.device("cuda", k)
    raise RcigError(f"unknown device '{name}'; choose {DEVICES}")


class MemoryAvailable(NamedTuple):
    """The memory a run may still use on its device (GB; None: unknown) and where that comes from."""

    gb: float | None
    where: str


def meminfo_gb(field: str, path: str | Path) -> float | None:
    """A ``kB`` field of a /proc meminfo or status file, in GB; None where it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e9
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory_available(device: torch.device, meminfo: str | Path = "/proc/meminfo",
                     status: str | Path = "/proc/self/status") -> MemoryAvailable:
    """What this process may hold on ``device``: on the CPU, its share of the machine's
    available memory (Linux's MemAvailable, shared by the ``LOCAL_WORLD_SIZE`` processes
    torchrun starts on a machine) plus what it holds already (its data are part of the
    estimate); on a CUDA GPU, its free memory plus what torch's allocator holds there already;
    elsewhere unknown."""
    if device.type == "cpu":
        available, own = meminfo_gb("MemAvailable", meminfo), meminfo_gb("VmRSS", status) or 0.0
        if available is None:
            return MemoryAvailable(None, "MemAvailable unreadable")
        sharers = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        share = f" / {sharers} processes" if sharers > 1 else ""
        return MemoryAvailable(available / sharers + own, f"the machine's MemAvailable {available:.1f} GB{share} + "
                                                          f"this process's {own:.1f} GB")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        held = torch.cuda.memory_reserved(device)
        return MemoryAvailable((free + held) / 1e9, f"free on {device} of {total / 1e9:.1f} GB")
    return MemoryAvailable(None, f"not measured on {device.type}")


def within_budget(available: MemoryAvailable, budget_gb: float | None) -> MemoryAvailable:
    """``available`` capped at ``budget_gb`` (None: no cap), saying which of the two counts."""
    if budget_gb is None:
        return available
    if available.gb is not None and available.gb < budget_gb:
        return MemoryAvailable(available.gb, f"{available.where}; less than --memory-gb {budget_gb:g}")
    return MemoryAvailable(budget_gb, f"--memory-gb {budget_gb:g}; {available.where}")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (nested dicts/lists of tensors) with every floating tensor moved to ``device``.

    Integer and byte tensors (generator states, counts) stay where they are: a
    ``torch.Generator``'s state must be a CPU ByteTensor.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# ------------------------------------------------------------------ the CPU's float mode

def flushing_subnormals() -> bool:
    """Whether this CPU thread treats subnormal floats as zero (probed: 1e-30 * 1e-10)."""
    return bool((torch.full((1,), 1e-30) * 1e-10).item() == 0)


@contextlib.contextmanager
def subnormals_flushed():
    """Treat subnormal floats (|x| < 1.2e-38 in float32) as zero inside the block (the FTZ
    and DAZ bits of this thread and of the threads it starts), then restore the caller's mode.

    Why: the distillation network's softplus(beta z) / beta with beta = 60 returns
    exp(beta z) / beta for z < -1.45, which is subnormal for z in about [-1.72, -1.45], and
    the JVPs and backward passes then multiply by those values. Subnormal arithmetic takes
    a slow path on x86, and with the reference init (pre-activations of unit scale) an
    outer step spends most of its time there (BENCHMARKS.md has the figures). The values
    flushed are 1e31 times smaller than anything they are added to, so results change only
    in the last bits (the oracle tests run in float64, whose subnormals start at 2.2e-308).
    The mode is per thread and new threads inherit it (POSIX), so the command line enters
    this block before torch starts its thread pool; a library caller whose pool already
    runs gets it on the calling thread only. The calling thread's mode is restored on exit
    (a process left flushing is what ``-ffast-math`` is blamed for); threads started inside
    the block keep flushing.
    """
    caller_flushes = flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not caller_flushes:
            torch.set_flush_denormal(False)


def with_subnormals_flushed(fn: Callable) -> Callable:
    """``fn`` run inside :func:`subnormals_flushed` (same signature and docstring)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with subnormals_flushed():
            return fn(*args, **kwargs)
    return wrapper
