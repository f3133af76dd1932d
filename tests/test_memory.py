"""The memory estimate of an outer step and the warning it gives before a run starts."""

import pytest
import torch

import rcig.run.driver as driver_module
from rcig.algorithm.memory import activation_floats, available_gb, shortfall_warning, step_memory
from rcig.algorithm.meta import expand_support, support_row_count
from rcig.run.driver import distill
from rcig.config import load_preset

# Peak RSS (GB) benchmarks/speed.py measured for the paper's presets and fast on a 2-core CPU:
# (preset, channels, image size, support rows after flip, GB)
MEASURED = [("depth_3_no_flip", 1, 28, 10, 4.37), ("depth_3_no_flip", 1, 28, 100, 5.64),
            ("depth_3_no_flip", 1, 28, 500, 10.95), ("depth_3", 3, 32, 20, 4.57), ("depth_3", 3, 32, 200, 7.09),
            ("depth_3", 3, 32, 1000, 20.41), ("fast", 1, 28, 100, 2.77), ("fast", 1, 28, 10, 1.48)]


def preset(name, channels, size):
    return load_preset(name, image_size=size, channels=channels)


@pytest.mark.parametrize("name,channels,size,rows,measured", MEASURED)
def test_the_estimate_is_within_a_few_tenths_of_a_gigabyte_of_each_measured_peak(name, channels, size, rows, measured):
    estimate = step_memory(preset(name, channels, size), rows, channels, size, 10)
    assert estimate.gb == pytest.approx(measured, abs=0.35)
    assert estimate.support_rows == rows


def test_activations_are_the_conv_outputs_of_the_papers_convnet():
    gray = preset("depth_3_no_flip", 1, 28)
    # width doubles per block; the gray first layer pads by 3 (28 -> 32 px), as the reference's
    assert activation_floats(gray, 1, 28, 10) == 128 * 32 ** 2 + 256 * 16 ** 2 + 512 * 8 ** 2
    assert activation_floats(preset("depth_3", 3, 32), 3, 32, 10) == 128 * 32 ** 2 + 256 * 16 ** 2 + 512 * 8 ** 2
    assert activation_floats(gray.replace(width=64), 1, 28, 10) == (128 * 32 ** 2 + 256 * 16 ** 2 + 512 * 8 ** 2) // 2
    big = preset("depth_4_big", 3, 64)
    assert activation_floats(big, 3, 64, 200) == 128 * 64 ** 2 + 256 * 32 ** 2 + 512 * 16 ** 2 + 1024 * 8 ** 2


def test_the_subsampling_knobs_and_the_target_batch_lower_the_estimate():
    cfg = preset("depth_3", 3, 32)
    whole = step_memory(cfg, 2000, 3, 32, 100)
    assert (whole.support_rows, whole.target_rows) == (2000, 1024) and whole.gb > 40
    for knob in ("inner_train_batch_size", "hinv_batch_size", "implicit_batch_size", "pool_train_batch_size"):
        assert step_memory(cfg.replace(**{knob: 500}), 2000, 3, 32, 100).support_rows == 500
    sub = step_memory(cfg.replace(direct_batch_sizes=[500, 256]), 2000, 3, 32, 100)
    assert (sub.support_rows, sub.target_rows) == (500, 256) and sub.gb < whole.gb / 4
    assert step_memory(cfg.replace(hinv_batch_size=5000), 2000, 3, 32, 100).support_rows == 2000  # capped at n


def test_a_warning_names_the_need_the_supply_and_the_knobs_only_when_short():
    estimate = step_memory(preset("depth_3", 3, 32), 2000, 3, 32, 100)
    assert shortfall_warning(estimate, None) is None  # unknown supply: no guess
    assert shortfall_warning(estimate, estimate.gb + 1) is None
    text = shortfall_warning(estimate, 21.0)
    assert text.startswith(f"rcig: warning: a step of this run may need about {estimate.gb:.0f} GB")
    assert "2000 support rows" in text and "21 GB are available" in text and "\n" not in text
    assert "--set inner_train_batch_size=K --set hinv_batch_size=K" in text


def test_available_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_gb(meminfo) == pytest.approx(20.48)
    assert available_gb(tmp_path / "missing") is None
    meminfo.write_text("MemTotal: 1 kB\n")
    assert available_gb(meminfo) is None


def test_a_run_that_may_not_fit_says_so_before_it_starts(monkeypatch, capsys):
    tiny = {"width": 8, "pool_size": 2, "target_batch_size": 64, "inner_lr": 3e-3, "hvp_lr": 3e-3}
    monkeypatch.setattr(driver_module, "available_gb", lambda: 0.01)
    distill("digits", 1, steps=1, overrides=tiny, progress=False)
    err = capsys.readouterr().err
    assert "rcig: warning: a step of this run may need about" in err and "10 support rows" in err
    monkeypatch.setattr(driver_module, "available_gb", lambda: 1000.0)
    distill("digits", 1, steps=1, overrides=tiny, progress=False)
    assert "warning" not in capsys.readouterr().err
    monkeypatch.setattr(driver_module, "available_gb", lambda: 0.01)
    distill("digits", 1, steps=1, overrides={**tiny, "flip": True}, progress=False)
    assert "20 support rows" in capsys.readouterr().err  # the flip copies count


@pytest.mark.parametrize("flip", [False, True])
def test_the_row_count_is_the_rows_the_inner_model_sees(flip):
    x, y = torch.zeros(7, 1, 4, 4), torch.zeros(7, 3)
    assert support_row_count(7, flip) == expand_support(x, y, flip)[0].shape[0] == expand_support(x, y, flip)[1].shape[0]
