"""Wall and CPU time of a run's parts, for its log and the benchmarks.

``Stopwatch`` records named laps (wall seconds between successive ``lap`` calls) and the
wall and CPU seconds since it started (``total``); CPU time is this process's, all its
threads, the fair measure on a shared machine. ``timed()`` is a block's total as a dict.
``past_budget`` says when a loop under a wall-clock budget should not start another step, and
``projected_last_step`` at which step such a loop will stop.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Iterator


class Stopwatch:
    """Named laps in wall seconds (rounded to 0.1 ms) and the totals since it started."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._wall = self._last = time.perf_counter()
        self._cpu = time.process_time()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now

    def total(self) -> dict[str, float]:
        """``{"seconds", "cpu_seconds"}`` since the start (rounded to milliseconds)."""
        return {"seconds": round(time.perf_counter() - self._wall, 3),
                "cpu_seconds": round(time.process_time() - self._cpu, 3)}


def past_budget(max_minutes: float | None, began: float, loop_started: float, now: float, steps_done: int) -> bool:
    """Whether a loop that began at ``began`` (``time.perf_counter`` seconds), started its
    steps at ``loop_started`` and has done ``steps_done`` >= 1 since should stop rather than
    start another: the next step, at the mean step time so far, would end past ``max_minutes``
    (None: no budget)."""
    if max_minutes is None:
        return False
    mean_step = (now - loop_started) / steps_done
    return now - began + mean_step > 60 * max_minutes


def projected_last_step(iteration: int, steps_done: int, loop_seconds: float, seconds_left: float) -> int:
    """The step a loop under a wall-clock budget will end at (:func:`past_budget`'s rule),
    projected at step ``iteration`` from the ``steps_done`` >= 1 steps it took ``loop_seconds``
    to make: as many more steps of their mean time as fit in ``seconds_left``."""
    return iteration + max(0, math.floor(seconds_left / (loop_seconds / steps_done)))


@contextlib.contextmanager
def timed() -> Iterator[dict[str, float]]:
    """A dict that, once the block has run, holds its :meth:`Stopwatch.total`."""
    cost: dict[str, float] = {}
    clock = Stopwatch()
    yield cost
    cost.update(clock.total())


__all__ = ["Stopwatch", "past_budget", "projected_last_step", "timed"]
