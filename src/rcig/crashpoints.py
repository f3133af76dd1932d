"""Test-only crash points, to check that a run killed or signalled at any moment resumes exactly.

``RCIG_TEST_KILL_AT=<phase>:<n>[:<SIGNAL>]`` makes the process send itself SIGNAL (a name such
as ``SIGTERM``; default ``SIGKILL``) the n-th time (1-based) it reaches ``crash_point(phase)``;
unset (always, outside tests) it does nothing. Phases:

    tuned             learning rates tuned, before the iteration-0 checkpoint
    stepped           an iteration done in memory, before its log line
    logged            its log line written, before any checkpoint
    checkpoint-write  a checkpoint fully written to its temporary file, before the rename
    checkpointed      a checkpoint renamed into place
    outputs           distilled.safetensors written, before grid.png

tests/test_resume.py kills and signals runs at each and checks the resumed run against an
uninterrupted one.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RCIG_TEST_KILL_AT"
_reached: Counter = Counter()


def crash_point(phase: str) -> None:
    """Send this process the signal ``RCIG_TEST_KILL_AT`` names if it names this phase and occurrence."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _reached[phase] += 1
    name, count, signame = (spec.split(":") + ["SIGKILL"])[:3]
    if name == phase and count == str(_reached[phase]):
        os.kill(os.getpid(), signal.Signals[signame])
