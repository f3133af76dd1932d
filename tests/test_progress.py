"""Progress output: plain lines in a file or pipe, nothing but warnings when disabled."""

import io
import time

from rcig.progress import Progress, format_duration, format_rate


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_in_a_file_one_per_update_without_carriage_returns():
    stream = io.StringIO()
    with Progress(4, "rcig digits ipc=1", "step", interval=0, stream=stream) as bar:
        for i in range(4):
            bar.update(1, loss=f"{1 / (i + 1):.3f}", batch_acc="0.500")
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 4
    assert "step 2/4 (50%)" in lines[1] and "loss 0.500" in lines[1] and "batch_acc 0.500" in lines[1]
    assert "s/step" in lines[1] or "step/s" in lines[1]
    assert " left" in lines[1] and " left" not in lines[3]  # the time left, until the end


def test_a_budget_says_its_time_left_where_it_ends_the_loop_first():
    def last_line(total, budget_seconds):
        stream = io.StringIO()
        with Progress(total, "rcig dm", "iter", interval=0, stream=stream,
                      deadline=time.perf_counter() + budget_seconds) as bar:
            time.sleep(0.05)
            bar.update(1)
        return stream.getvalue().splitlines()[-1]

    assert "left in the budget" in last_line(None, 600)  # no count: the budget ends it
    assert "left in the budget" in last_line(10 ** 6, 600)  # a count it will not reach
    line = last_line(3, 10 ** 6)  # a count reached long before the budget's end
    assert " left" in line and "budget" not in line


def test_plain_lines_at_intervals_and_a_last_one():
    stream = io.StringIO()
    with Progress(1000, "evaluate", interval=3600, stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "step 1000/1000 (100%)" in lines[0]


def test_disabled_shows_nothing_but_warnings():
    stream = io.StringIO()
    with Progress(3, "evaluate", enabled=False, interval=0, stream=stream) as bar:
        bar.update(3)
        bar.write("rcig: iteration 3: aug 0.5")
        bar.write("rcig: warning: low memory", info=False)
    assert stream.getvalue() == "rcig: warning: low memory\n"


def test_a_terminal_gets_a_bar():
    stream = Terminal()
    with Progress(3, "evaluate", stream=stream) as bar:
        bar.update(3)
    assert "\r" in stream.getvalue() and "3/3" in stream.getvalue()
    stream = Terminal()
    with Progress(None, "rcig digits ipc=1", stream=stream, deadline=time.perf_counter() + 90) as bar:
        bar.update(1, loss="0.5")
    assert "budget left=1m" in stream.getvalue() and "loss=0.5" in stream.getvalue()


def test_formats():
    assert format_duration(42) == "42s" and format_duration(228) == "3m48s" and format_duration(7500) == "2h05m"
    assert format_rate(5.26, "step") == "5.3 s/step" and format_rate(0.01, "step") == "100 step/s"
