"""The memory estimate of a run, the chunk size chosen from it, and what a run says and refuses."""

import json
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run
from rcig import parallel
from rcig.algorithm.memory import (
    BASE_GB, FIT, FITS, NEVER, OVER, USABLE, DataShape, choose_chunk_rows, estimate, fit, network_size, step_rows,
)
from rcig.algorithm.meta import expand_support, support_row_count
from rcig.config import load_preset
from rcig.errors import RcigError
from rcig.parallel import MemoryAvailable
from rcig.run.driver import distill

CIFAR100 = DataShape(3, 32, 100, 50_000, 10_000)
TINY = {"width": 8, "pool_size": 2, "target_batch_size": 64, "inner_lr": 3e-3, "hvp_lr": 3e-3}
DIGITS = DataShape(1, 8, 10, 1437, 360)  # the embedded digits' split


def preset(name, channels, size):
    return load_preset(name, image_size=size, channels=channels)


def test_the_network_is_counted_on_the_meta_device():
    gray = preset("depth_3_no_flip", 1, 28)
    # width doubles per block; the gray first layer pads by 3 (28 -> 32 px), as the reference's
    size = network_size(gray, 1, 28, 10)
    assert size.activation_floats == 128 * 32 ** 2 + 256 * 16 ** 2 + 512 * 8 ** 2
    assert size.largest_floats == 128 * 32 ** 2 and size.features == 512 * 4 * 4
    assert size.params == (9 * 128 + 128) + (9 * 128 * 256 + 256) + (9 * 256 * 512 + 512) + 512 * 16 * 10 + 10
    assert network_size(gray.replace(width=64), 1, 28, 10).activation_floats == size.activation_floats // 2
    big = network_size(preset("depth_4_big", 3, 64), 3, 64, 200)
    assert big.activation_floats == 128 * 64 ** 2 + 256 * 32 ** 2 + 512 * 16 ** 2 + 1024 * 8 ** 2


def test_data_and_pool_are_counted_where_the_device_holds_them():
    cfg = preset("depth_3", 3, 32)
    on_cpu, on_gpu = estimate(cfg, CIFAR100, 10, None, "cpu"), estimate(cfg, CIFAR100, 10, None, "cuda")
    assert on_cpu.data_gb == pytest.approx((50_000 * 4 + 10_000) * 3072 / 1e9)  # float32 train, uint8 test
    assert on_gpu.data_gb == pytest.approx(50_000 * 3072 * 4 / 1e9)  # the float32 training images
    params = network_size(cfg, 3, 32, 100).params
    assert on_cpu.pool_gb == on_gpu.pool_gb == pytest.approx(30 * 3 * 4 * params / 1e9)  # weights, two moments
    assert estimate(cfg, CIFAR100, 10, None, "cpu", pool_members=1).pool_gb == pytest.approx(on_cpu.pool_gb / 30)
    assert on_gpu.process_gb == pytest.approx(4 * params / 1e9)  # the template network
    assert on_cpu.process_gb == pytest.approx(BASE_GB + on_gpu.process_gb)  # and Python, torch
    assert on_cpu.gb == pytest.approx(on_cpu.process_gb + on_cpu.data_gb + on_cpu.pool_gb + on_cpu.step_gb)
    assert on_cpu.step_gb == pytest.approx(on_gpu.step_gb)


def test_the_preparation_is_counted_on_the_cpu_by_its_larger_phase():
    """Before the run, on the CPU: the loaded uint8 images and the larger of the fit (gray: two
    float32 copies; RGB: the covariance's eigendecomposition, 4 d^2 float64) and the conversion
    (the float32 training images and a chunk, 2,048 images of 64 px, 16 bytes a value)."""
    tiny = DataShape(3, 64, 200, 100_000, 10_000)
    cfg = preset("depth_4_big", 3, 64)
    d = 3 * 64 * 64
    conversion = BASE_GB + (110_000 * d + 4 * 100_000 * d + 16 * 2048 * d) / 1e9
    assert estimate(cfg, tiny, 10, 1, "cpu").prepare_gb == pytest.approx(conversion)  # 6.9 GB
    assert estimate(cfg, tiny, 10, 1, "cpu").gb > conversion  # below the run's least
    few = DataShape(3, 64, 10, 100, 10)
    assert estimate(cfg, few, 1, 1, "cpu").prepare_gb == pytest.approx(BASE_GB + (110 * d + 4 * 8 * d * d) / 1e9)
    imagenette = DataShape(3, 128, 10, 20, 5)  # the block ZCA: d_w = 3 x 32 x 32
    d_big = 3 * 128 * 128
    assert estimate(preset("depth_5", 3, 128), imagenette, 1, 1, "cpu").prepare_gb == pytest.approx(
        BASE_GB + (25 * d_big + max(8 * 3072 ** 2 + 16 * 20 * d_big, 32 * 3072 ** 2)) / 1e9)
    gray = DataShape(1, 28, 10, 60_000, 10_000)
    assert estimate(preset("depth_3_no_flip", 1, 28), gray, 1, 1, "cpu").prepare_gb == pytest.approx(
        BASE_GB + (70_000 * 784 + 8 * 60_000 * 784) / 1e9)
    assert estimate(cfg, tiny, 10, 1, "cuda").prepare_gb == 0.0  # the GPU takes no part


def test_chunks_bound_the_step_and_the_subsampling_knobs_the_rows():
    cfg = preset("depth_3", 3, 32)
    whole = estimate(cfg, CIFAR100, 10, None)
    assert whole.rows[:2] == (2000, 1024) and whole.step_gb > 40
    steps = [estimate(cfg, CIFAR100, 10, k).step_gb for k in (16, 64, 256, 1024)]
    assert steps == sorted(steps) and steps[-1] < whole.step_gb / 2
    assert estimate(cfg, CIFAR100, 10, 4096).step_gb == pytest.approx(whole.step_gb)  # one chunk: one graph
    for knob in ("inner_train_batch_size", "hinv_batch_size", "implicit_batch_size", "pool_train_batch_size"):
        assert step_rows(cfg.replace(**{knob: 500}), 10, 100).support == 500
    sub = estimate(cfg.replace(direct_batch_sizes=[500, 256]), CIFAR100, 10, None)
    assert sub.rows[:2] == (500, 256) and sub.step_gb < whole.step_gb / 4
    assert step_rows(cfg.replace(hinv_batch_size=5000), 10, 100).support == 2000  # capped at n


def test_in_chunks_the_forwards_without_a_graph_take_a_chunk_at_most():
    cfg = preset("depth_5", 3, 128)
    imagenette = DataShape(3, 128, 10, 9_469, 3_925)
    assert step_rows(cfg, 1, 10).no_grad == 256  # the target rows without gradients, max_forward_batch_size

    def step_gb(max_forward, k):
        return estimate(cfg.replace(max_forward_batch_size=max_forward), imagenette, 1, k).step_gb

    assert step_gb(256, 8) == pytest.approx(step_gb(8, 8))  # 8 rows at a time either way
    assert step_gb(256, None) > step_gb(8, None) + 8  # one graph: 256 rows at a time, about 8.6 GB


def test_the_choice_keeps_one_graph_when_it_fits_else_takes_the_largest_chunk_that_fits():
    cfg = preset("depth_3", 3, 32)
    whole = estimate(cfg, CIFAR100, 10, None).gb
    fits = choose_chunk_rows(cfg, CIFAR100, 10, whole / USABLE + 0.1)
    assert (fits.chunk_rows, fits.verdict, fits.why) == (None, FITS, "the whole step fits")
    available = 16.0
    tight = choose_chunk_rows(cfg, CIFAR100, 10, available)
    k = tight.chunk_rows
    assert tight.verdict == FITS and k & (k - 1) == 0 and 1 < k < 2000
    assert tight.estimate.gb <= USABLE * available < estimate(cfg, CIFAR100, 10, 2 * k).gb
    assert tight.why.startswith(f"the whole step would need {whole:.1f} GB")
    never = choose_chunk_rows(cfg, CIFAR100, 10, 1.0)
    assert (never.chunk_rows, never.verdict) == (1, NEVER)
    assert choose_chunk_rows(cfg, CIFAR100, 10, None).chunk_rows is None  # memory unknown: one graph


def test_a_set_chunk_size_is_kept_and_judged():
    cfg = preset("depth_3", 3, 32)
    assert choose_chunk_rows(cfg.replace(chunk_rows=64), CIFAR100, 10, 1000.0)[::2] == (64, "set in the config")
    whole = choose_chunk_rows(cfg.replace(chunk_rows=None), CIFAR100, 10, 16.0)
    assert (whole.chunk_rows, whole.verdict) == (None, OVER)  # one graph asked for: a smaller size would fit
    assert choose_chunk_rows(cfg.replace(chunk_rows=8), CIFAR100, 10, 1.0).verdict == NEVER
    unchunkable = cfg.replace(linearize=False)
    assert choose_chunk_rows(unchunkable, CIFAR100, 10, 16.0)[::3] == (None, NEVER)


def test_memory_available_is_meminfos_plus_the_process_own(tmp_path, monkeypatch):
    meminfo, status = tmp_path / "meminfo", tmp_path / "status"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n")
    status.write_text("VmHWM:   3000000 kB\nVmRSS:   1000000 kB\n")
    got = parallel.memory_available(torch.device("cpu"), meminfo, status)
    assert got.gb == pytest.approx(21.504) and "MemAvailable 20.5 GB" in got.where
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share it
    shared = parallel.memory_available(torch.device("cpu"), meminfo, status)
    assert shared.gb == pytest.approx(20.48 / 2 + 1.024) and "/ 2 processes" in shared.where
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert parallel.memory_available(torch.device("cpu"), tmp_path / "missing", status).gb is None
    meminfo.write_text("MemTotal: 1 kB\n")
    assert parallel.memory_available(torch.device("cpu"), meminfo, status).gb is None


def with_memory(monkeypatch, gb):
    monkeypatch.setattr(parallel, "memory_available", lambda device: MemoryAvailable(gb, "test"))


def digits_estimate(k, overrides=TINY):
    cfg = load_preset("depth_3_no_flip").replace(**overrides, steps=1)
    return estimate(cfg, DIGITS, 1, k).gb


def test_a_run_says_its_estimate_and_keeps_one_graph_when_it_fits(monkeypatch, capsys, tmp_path):
    with_memory(monkeypatch, 1000.0)
    result = distill("digits", 1, steps=1, overrides=TINY, out=tmp_path / "run")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rcig: memory:")]
    assert len(lines) == 1 and "chunk_rows=null (one graph): the whole step fits; 1000.0 GB available" in lines[0]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["chunk_rows"] is None
    assert result.meta["config"]["chunk_rows"] is None


def test_a_tight_run_takes_chunks_records_them_and_resumes_with_them(monkeypatch, capsys, tmp_path):
    # between the estimates at 2 and 4 rows per chunk: 2 fits, 4 does not (nor one graph)
    with_memory(monkeypatch, (digits_estimate(2) + digits_estimate(4)) / 2 / USABLE)
    distill("digits", 1, steps=1, overrides=TINY, out=tmp_path / "run", keep_checkpoint=True)
    assert "chunk_rows=2: the whole step would need" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["chunk_rows"] == 2
    with_memory(monkeypatch, 1000.0)  # more memory at the resume: the run keeps its chunks
    resumed = distill(out=tmp_path / "run", resume=True, steps=2)
    assert "chunk_rows=2: the run's, from its run.json" in capsys.readouterr().err
    straight = distill("digits", 1, steps=2, overrides={**TINY, "chunk_rows": 2}, progress=False)
    assert resumed.meta["config"]["chunk_rows"] == 2
    assert torch.equal(resumed.images, straight.images) and torch.equal(resumed.labels, straight.labels)


def test_a_memory_budget_sets_the_chunks_of_a_run_on_a_larger_device(monkeypatch, capsys, tmp_path):
    with_memory(monkeypatch, 1000.0)
    budget = (digits_estimate(2) + digits_estimate(4)) / 2 / USABLE  # 2 fits it, 4 does not (nor one graph)
    argv = ["distill", "--dataset", "digits", "--ipc", "1", "--steps", "1", "--no-eval", "--out", tmp_path / "run",
            "--memory-gb", str(budget)] + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert "chunk_rows=2: the whole step would need" in err and f"--memory-gb {budget:g}; test" in err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["chunk_rows"] == 2
    with_memory(monkeypatch, budget)  # the device has less than the budget: its memory counts
    result = distill("digits", 1, steps=1, overrides=TINY, memory_gb=1000.0)
    assert result.meta["config"]["chunk_rows"] == 2
    assert "less than --memory-gb 1000" in capsys.readouterr().err
    code, _, err = run(["distill", "--memory-gb", "0"], capsys)
    one_line_error(code, err, "argument --memory-gb: expected a number of GB > 0, got '0'")
    with pytest.raises(RcigError, match="--memory-gb must be a number of GB > 0"):
        distill("digits", 1, steps=1, memory_gb=float("nan"))


def test_a_set_chunk_size_is_honoured(monkeypatch, capsys):
    with_memory(monkeypatch, 1000.0)
    forced = distill("digits", 1, steps=1, overrides={**TINY, "chunk_rows": 4}, progress=False)
    assert forced.meta["config"]["chunk_rows"] == 4
    with_memory(monkeypatch, (digits_estimate(2) + digits_estimate(4)) / 2 / USABLE)
    result = distill("digits", 1, steps=1, overrides={**TINY, "chunk_rows": None}, progress=False)
    assert result.meta["config"]["chunk_rows"] is None
    err = capsys.readouterr().err  # the warning even when quiet
    assert "rcig: warning: a step may need about" in err and "set chunk_rows=auto or a smaller size" in err


def test_a_run_that_fits_at_no_chunk_size_is_refused_at_once_in_one_line(monkeypatch, capsys, tmp_path):
    with_memory(monkeypatch, digits_estimate(1) / 2 / USABLE)
    argv = ["distill", "--dataset", "digits", "--ipc", "1", "--steps", "1", "--out", tmp_path / "run"]
    code, _, err = run(argv + [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")], capsys)
    one_line_error(code, err, "this run fits in memory at no chunk size")
    assert "--ipc, target_batch_size, pool_size, max_forward_batch_size (where chunks cannot run" in err
    assert "or the rows with gradients" in err
    assert "more memory" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("flip", [False, True])
def test_the_row_count_is_the_rows_the_inner_model_sees(flip):
    x, y = torch.zeros(7, 1, 4, 4), torch.zeros(7, 3)
    rows = expand_support(x, y, flip)
    assert support_row_count(7, flip) == rows[0].shape[0] == rows[1].shape[0]
    cfg = load_preset("depth_3_no_flip").replace(flip=flip)
    assert step_rows(cfg, 7, 1).support_all == support_row_count(7, flip)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MEASURED = json.loads((BENCHMARKS / "memory.json").read_text())  # the rows the constants are fitted to
PAPER_SETTINGS = json.loads((BENCHMARKS / "memory_paper.json").read_text())  # the paper's, not fitted to


def test_the_estimate_is_within_a_fifth_of_every_measured_peak(benchmark_script):
    model = benchmark_script("memory_model")
    for row in MEASURED + PAPER_SETTINGS:
        peak = row["peak_rss_mb"] * 2 ** 20 / 1e9
        assert model.row_estimate(row, FIT).gb == pytest.approx(peak, rel=0.2), row


def test_every_paper_setting_ran_a_step_in_16_gb(benchmark_script):
    """One outer step of each of the paper's settings, measured on its dataset's size with the
    full pool and the chunks a 16 GB device takes, peaked under 16 GB."""
    model = benchmark_script("memory_model")
    for preset, data, values, ipc in model.SETTINGS:
        pool = model.preset_config(preset, values).pool_size
        row = model.setting_row(MEASURED + PAPER_SETTINGS, preset, values, ipc, pool)
        assert row is not None, (preset, data, ipc)
        assert model.gb(row["peak_rss_mb"]) < 16, (preset, data, ipc)


def test_the_benchmarks_table_of_the_paper_settings_is_the_measured_rows(benchmark_script):
    text = (BENCHMARKS.parent / "BENCHMARKS.md").read_text().splitlines()
    lines = benchmark_script("memory_model").paper_rows(MEASURED + PAPER_SETTINGS)
    assert len(lines) == 9 and all(line in text for line in lines)


def test_the_constants_are_the_fit_of_the_measured_rows():
    """benchmarks/memory.json's rows refit to the module's constants: a row added there is
    refitted with ``python benchmarks/memory_model.py fit`` and its constants put in the module."""
    refit = fit(MEASURED)
    for name in ("R_s", "R_t", "C_k", "C_p"):
        assert getattr(refit, name) == pytest.approx(getattr(FIT, name), abs=0.05), name


def test_the_docs_table_is_the_estimates(benchmark_script):
    text = (Path(__file__).resolve().parents[1] / "docs" / "memory.md").read_text()
    lines = benchmark_script("memory_model").table()
    assert len(lines) == 9 and all(line in text.splitlines() for line in lines)
