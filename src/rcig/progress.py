"""Progress of a long loop: a bar on a terminal, plain timestamped lines anywhere else.

``Progress(total, desc, unit, enabled=...)`` is the one way rcig reports progress. When its
stream (stderr) is a terminal it draws a tqdm bar; when it is a pipe or a file it writes one
plain line per ``interval`` seconds (``interval=0``: one per update) and a last one at the
end, with no carriage-return frames::

    12:03:04 rcig digits ipc=1: step 7/50 (14%)  loss 0.412  outer-batch acc 0.300  5.3 s/step  3m48s left  (37s)

A loop under a wall-clock budget (``deadline``) says the budget's time left where the budget
ends it before its count would, and where it has no count::

    12:03:04 rcig fashion_mnist ipc=1: step 701  loss 0.703  1.8 s/step  1h37m left in the budget  (21m21s)

Disabled (``enabled=False``, what ``--quiet`` and ``progress=False`` give), it shows nothing
but still passes :meth:`Progress.write` lines on unless they are ``info`` (warnings always
reach the user).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Seconds between two plain lines of a loop whose steps are short (an evaluation's training).
PLAIN_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
    """``42s``, ``3m48s``, ``2h05m``: short and unambiguous."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_rate(seconds_per_unit: float, unit: str) -> str:
    """``5.3 s/step`` for slow loops, ``120 step/s`` for fast ones."""
    if seconds_per_unit >= 0.5:
        return f"{seconds_per_unit:.1f} s/{unit}"
    return f"{1 / max(seconds_per_unit, 1e-9):.0f} {unit}/s"


def format_count(n: float, unit: str) -> str:
    return f"{n / 1e6:.1f} MB" if unit == "B" else f"{int(n)}"


class Progress:
    """A running count of ``unit`` out of ``total`` (None: unknown) with named fields; options:
    ``initial`` (the count to start from), ``interval`` (seconds between plain lines),
    ``stream`` (default stderr), ``transient`` (a bar that disappears when done), ``deadline``
    (a ``time.perf_counter()`` at which a budget ends the loop; None: no budget).

    ``update(n, **fields)`` advances the count and sets fields shown beside it (a field set
    to None is dropped); ``write(line)`` prints a line without breaking the bar; ``close()``
    ends it (also as a context manager).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", *, enabled: bool = True,
                 initial: int = 0, interval: float = PLAIN_INTERVAL, stream: TextIO | None = None,
                 transient: bool = False, deadline: float | None = None):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.deadline = deadline
        self.n = self.first = initial
        self.interval = interval
        self.fields: dict[str, str] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.started = self.last_line = time.perf_counter()
        self.pending = False  # updates not shown in a plain line yet
        self.closed = False
        self.bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                            dynamic_ncols=True, leave=not transient, smoothing=0,
                            unit_scale=unit == "B")

    def update(self, n: int = 1, **fields) -> None:
        self.n += n
        self.set_fields(fields)
        if self.bar is not None:
            if self.deadline is not None:
                self.fields["budget left"] = format_duration(self.deadline - time.perf_counter())
            if fields or self.deadline is not None:
                self.bar.set_postfix(self.fields, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            self.pending = True
            if time.perf_counter() - self.last_line >= self.interval:
                self._line()

    def set_fields(self, fields: dict) -> None:
        for key, value in fields.items():
            if value is None:
                self.fields.pop(key, None)
            else:
                self.fields[key] = str(value)

    def write(self, line: str, *, info: bool = True) -> None:
        """Print ``line`` on the stream; an ``info`` line only when progress is shown."""
        if info and not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def line(self) -> str:
        """The plain line for the count so far."""
        now = time.perf_counter()
        done = self.n - self.first
        count = format_count(self.n, self.unit)
        if self.total:
            count = f"{count}/{format_count(self.total, self.unit)} ({100 * self.n / self.total:.0f}%)"
        words = [f"{time.strftime('%H:%M:%S')} {self.desc}: {'' if self.unit == 'B' else self.unit + ' '}{count}"]
        words += [f"{k} {v}" for k, v in self.fields.items()]
        if done > 0 and self.unit != "B":
            per_unit = (now - self.started) / done
            words.append(format_rate(per_unit, self.unit))
            counted = per_unit * (self.total - self.n) if self.total and self.n < self.total else None
            budget = self.deadline - now if self.deadline is not None else None
            if budget is not None and (counted is None or budget < counted):
                words.append(f"{format_duration(budget)} left in the budget")
            elif counted is not None:
                words.append(f"{format_duration(counted)} left")
        words.append(f"({format_duration(now - self.started)})")
        return "  ".join(words)

    def _line(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self.last_line, self.pending = time.perf_counter(), False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.pending:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["Progress", "format_duration", "format_rate", "PLAIN_INTERVAL"]
