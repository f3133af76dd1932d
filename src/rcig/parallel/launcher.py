"""``rcig ... --workers N``: start N ranks of the same command through torch.distributed.run."""

from __future__ import annotations

import os
import sys


def worker_threads(workers: int) -> int | None:
    """The threads each rank would take from the environment's ``OMP_NUM_THREADS`` (None: unset
    or not a positive integer)."""
    text = os.environ.get("OMP_NUM_THREADS", "")
    return int(text) if text.strip().isdigit() and int(text) > 0 else None


def oversubscribed_warning(workers: int, threads: int, cores: int) -> str:
    return (f"rcig: warning: {workers} workers x OMP_NUM_THREADS={threads} = {workers * threads} threads on "
            f"{cores} cores: oversubscribed ranks can run several times slower; unset OMP_NUM_THREADS to give "
            f"each {max(1, cores // workers)}")


def launch(argv: list[str], workers: int) -> int:
    """``torchrun --standalone --nproc-per-node=workers -m rcig argv``, in this process, via
    torch.distributed.run; each rank gets ``OMP_NUM_THREADS = cores // workers`` unless it
    is set (a warning when what is set oversubscribes the cores). Returns the exit status (the highest of the ranks' own)."""
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    threads = worker_threads(workers)
    if threads is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    elif threads * workers > (os.cpu_count() or 1):
        print(oversubscribed_warning(workers, threads, os.cpu_count() or 1), file=sys.stderr)
    for name in list(logging.root.manager.loggerDict):  # what matters is said below, in one line
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={workers}", "-m", "rcig", *argv]))
    except SignalException as exc:  # Ctrl-C: the ranks got it too, and stopped cleanly
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        first = min(exc.failures.values(), key=lambda f: f.timestamp)  # the others were stopped after it
        if first.exitcode > 0:  # the rank reported its own error (exit status 2: bad input)
            return first.exitcode
        print(f"rcig: error: rank {first.local_rank} of {workers} was killed by signal {-first.exitcode}; "
              "the others were stopped (a distillation's last checkpoint stands)", file=sys.stderr)
        return 128 - first.exitcode
    return 0
