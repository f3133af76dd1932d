"""What the benchmarks read from an rcig run's ``log.jsonl``: how far it got, and its curve.

One line per record (``rcig.run.folder``): iteration 0 may hold the run's setup,
``{"iter": 0, "tuning": {..., "seconds", "cpu_seconds"}}`` (learning-rate tuning) or
``{"iter": 0, "init": {"method": "herding", ...}}`` (the herding start's pass over the data);
each outer step is ``{"iter", "outer_loss", "seconds", "cpu_seconds", ...}``; a periodic
evaluation is ``{"iter", "eval": {setting: {"mean", ...}}}``. The setup counts towards a run's
cost: a budget in minutes buys the start and the steps together.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

SETUP_RECORDS = ("tuning", "init")


class Progress(NamedTuple):
    """How far a run is. CPU seconds are NaN for a log whose steps record none."""

    steps: int  # outer steps done
    cpu_seconds: float  # setup + outer steps
    wall_seconds: float  # setup + outer steps
    step_cpu_seconds: float  # outer steps only
    setup_cpu_seconds: float


def records(log: Path) -> list[dict]:
    """The records of ``log`` ([] when the run has not started)."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def read_progress(log: Path) -> Progress:
    steps, step_cpu, wall, setup_cpu = 0, 0.0, 0.0, 0.0
    for record in records(log):
        for setup in SETUP_RECORDS:
            if setup in record:
                setup_cpu += record[setup].get("cpu_seconds", math.nan)
                wall += record[setup]["seconds"]
        if "outer_loss" in record:
            steps, step_cpu = record["iter"], step_cpu + record.get("cpu_seconds", math.nan)
            wall += record["seconds"]
    return Progress(steps, step_cpu + setup_cpu, wall, step_cpu, setup_cpu)


def read_curve(log: Path) -> list[dict]:
    """The periodic evaluations of a run: [{"iter", "seconds", setting: mean}], ``seconds`` the
    wall time of the outer steps before it."""
    curve, seconds = [], 0.0
    for record in records(log):
        if "outer_loss" in record:
            seconds += record["seconds"]
        elif "eval" in record:
            means = {k: v["mean"] for k, v in record["eval"].items() if isinstance(v, dict) and "mean" in v}
            curve.append({"iter": record["iter"], "seconds": round(seconds, 1), **means})
    return curve
