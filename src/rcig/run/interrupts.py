"""Stopping a run on a signal without losing a finished iteration.

SIGINT (Ctrl-C), SIGTERM (what a batch scheduler sends on preemption or at the end of a time
limit, and what ``kill`` and ``timeout`` send), SIGHUP (the terminal went away) and SIGUSR1 (a
scheduler's advance warning, e.g. Slurm's ``--signal``) are handled alike:

1. the first one is noted (and announced on stderr) and the iteration in flight goes on;
2. after it the run writes a checkpoint and stops with :class:`Interrupted`, whose message says
   how to resume and whose ``exit_status`` is 128 + the signal's number (130 for SIGINT, 143
   for SIGTERM, 129 for SIGHUP, 138 for SIGUSR1), the shell's convention for a process ended
   by a signal, so a scheduler sees an interrupted run, not a finished or failed one;
3. an iteration that has not finished ``grace`` seconds after the signal, or one in flight
   when a second signal comes, is abandoned (:class:`Abandon` is raised inside the block
   marked :meth:`Stopper.abandonable`): the run's state from before it is checkpointed instead;
4. a second signal outside such a block (during a checkpoint write, data loading) stops at
   once: the last checkpoint stands (every write is atomic).

Under torchrun the ranks agree after each iteration on whether to stop
(:func:`rcig.parallel.step_control`); an iteration in flight is never abandoned there (the
ranks would leave their collectives at different points), so a run on several ranks stops
after the iteration in flight, or at once on a second signal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)
GRACE_SECONDS = 20.0  # a scheduler's usual wait between SIGTERM and SIGKILL is 30 s


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal: ``exit_status`` is 128 + ``signum``; the message says what was
    saved and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class Abandon(BaseException):
    """Raised inside :meth:`Stopper.abandonable` to give up the work in flight."""


class Stopper:
    """What the signal handlers saw: ``signum`` (the first stop signal, None until one came)."""

    def __init__(self, grace: float, may_abandon: bool, announce: bool):
        self.grace, self.may_abandon, self.announce = grace, may_abandon, announce
        self.signum: int | None = None
        self.overdue = False  # the grace ran out, or a second signal came
        self._inside = False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def abandonable(self):
        """A block (an iteration, an evaluation) that raises :class:`Abandon` when the grace
        runs out or a second signal comes while it runs."""
        if self.overdue and self.may_abandon:
            raise Abandon
        self._inside = True
        try:
            yield
        finally:
            self._inside = False

    def on_signal(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.announce:
                say(f"\nrcig: {signal.Signals(signum).name}: finishing the iteration in flight"
                    + (f" (at most {self.grace:g} s)" if self.may_abandon else "")
                    + ", then saving a checkpoint; signal again to stop sooner\n")
            if self.may_abandon:
                signal.setitimer(signal.ITIMER_REAL, self.grace)
            return
        self.overdue = True
        if not (self._inside and self.may_abandon):
            raise Interrupted(self.signum, f"stopped by a second {signal.Signals(signum).name}; "
                              "the last checkpoint stands")
        raise Abandon

    def on_alarm(self, signum: int, frame) -> None:
        self.overdue = True
        if self._inside:
            raise Abandon


def say(text: str) -> None:
    """Write ``text`` to the standard error's file descriptor directly: a signal handler that
    printed through ``sys.stderr`` while the program was printing a progress line would meet
    the stream's lock held (a RuntimeError about a reentrant call)."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass


@contextlib.contextmanager
def stop_on_signals(grace: float = GRACE_SECONDS, may_abandon: bool = True, announce: bool = True):
    """Handle :data:`STOP_SIGNALS` as the module docstring says inside the block; yields the
    :class:`Stopper`. Outside the main thread (where Python delivers no signals) nothing is
    installed and nothing is ever requested."""
    stopper = Stopper(grace, may_abandon, announce)
    if threading.current_thread() is not threading.main_thread():
        yield stopper
        return
    previous = {s: signal.signal(s, stopper.on_signal) for s in STOP_SIGNALS}
    previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, stopper.on_alarm)
    try:
        yield stopper
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["Abandon", "GRACE_SECONDS", "Interrupted", "STOP_SIGNALS", "Stopper", "stop_on_signals"]
