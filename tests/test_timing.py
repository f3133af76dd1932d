"""The one timing helper: laps between calls, totals since the start, CPU apart from wall."""

import time

from rcig.timing import Stopwatch, timed


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
