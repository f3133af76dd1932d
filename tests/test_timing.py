"""The timing helpers: laps between calls, totals since the start, CPU apart from wall, and the
wall-clock budget rule that distillation and DM share."""

import time

from rcig.timing import Stopwatch, past_budget, timed


def test_laps_time_the_stretch_since_the_previous_lap_and_totals_since_the_start():
    clock = Stopwatch()
    time.sleep(0.05)
    clock.lap("first")
    clock.lap("second")
    total = clock.total()
    assert clock.laps["first"] >= 0.05 and clock.laps["second"] < 0.05
    assert total["seconds"] >= 0.05 and total["cpu_seconds"] < 0.04  # sleeping costs no CPU


def test_timed_fills_its_dict_when_the_block_ends():
    with timed() as cost:
        assert cost == {}
        end = time.process_time() + 0.05
        while time.process_time() < end:  # busy: CPU time passes too
            pass
    assert cost["cpu_seconds"] >= 0.05 and cost["seconds"] >= 0.04


def test_past_budget_stops_before_a_step_that_would_end_past_the_budget():
    # began at 0, loop from 30 s (loading, tuning), budget 1 minute
    assert not past_budget(None, 0, 30, 1e9, 1)
    assert not past_budget(1, 0, 30, 40, 1)  # 10 s a step: the next ends at 50 s
    assert not past_budget(1, 0, 30, 50, 2)  # 10 s a step: the next ends at 60 s, inside
    assert past_budget(1, 0, 30, 55, 2)  # 12.5 s a step: the next would end at 67.5 s
    assert past_budget(0.5, 0, 30, 40, 1)  # the setup counts: 30 s of 30 gone
