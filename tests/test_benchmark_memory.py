"""benchmarks/memory.py: one outer step's row, by chunk_rows, at toy sizes, beside its estimate."""

import json

import pytest

pytestmark = pytest.mark.bench
TOY = ["--set", "width=4", "--set", "target_batch_size=16", "--set", "n_inner_steps=2", "--set", "n_hinv_steps=2",
       "--set", "pool_size=2"]


def test_rows_with_and_without_chunks(benchmark_script, tmp_path):
    memory = benchmark_script("memory")
    out = tmp_path / "memory.json"
    out.write_text(json.dumps([{"shape": "earlier"}]))  # rows are appended to the file's
    memory.main(["--shape", "fashion", "--ipc", "1", "--chunk-rows", "none", "4", "auto", "--train-images", "100",
                 "--test-images", "10", "--memory-gb", "0.5", "--out", str(out), *TOY])
    earlier, *rows = json.loads(out.read_text())
    assert earlier == {"shape": "earlier"} and [row["chunk_rows"] for row in rows] == [None, 4, None]  # toys fit whole
    assert [row["asked"] for row in rows] == ["none", "4", "auto"]
    for row in rows:
        assert row["support_rows"] == 10 and row["target_batch"] == 16 and row["threads"] == 1
        assert (row["train_images"], row["test_images"], row["pool_members"]) == (100, 10, 2)
        assert row["estimate_gb"] == pytest.approx(sum(row["estimate_parts_gb"].values())) and row["available_gb"] == 0.5
        assert row["peak_rss_mb"] >= row["rss_before_step_mb"] > 0 and row["seconds_per_step"] > 0
        assert row["overrides"]["width"] == 4 and set(row["parts"]) >= {"inner_solve", "direct", "hinv", "implicit"}


def test_the_paper_table_takes_each_settings_last_full_row_and_projects_the_cut_solves(benchmark_script):
    model = benchmark_script("memory_model")
    row = {"preset": "depth_3", "shape": "cifar10", "ipc": 50, "channels": 3, "image_size": 32, "classes": 10,
           "train_images": 50_000, "test_images": 10_000, "pool_members": 30, "chunk_rows": 512,
           "overrides": {"n_inner_steps": 1, "n_hinv_steps": 1}, "support_rows": 1000, "target_batch": 1024,
           "seconds_per_step": 100.0, "parts": {"inner_solve": 3.0, "hinv": 2.0}, "peak_rss_mb": 8 * 1024,
           "rss_before_step_mb": 2048}
    # the preset's 20 iterations per solve: 19 more of each
    cfg = model.preset_config("depth_3", (3, 32))
    assert model.projected_seconds(row, cfg) == pytest.approx(100 + 19 * 3 + 19 * 2)
    assert model.projected_seconds({**row, "overrides": {}}, cfg) == 100  # nothing cut: as measured
    rows = [{**row, "peak_rss_mb": 1}, row, {**row, "pool_members": 1}, {**row, "train_images": 512},
            {**row, "preset": "depth_5"}]
    lines = model.paper_rows(rows)
    assert len(lines) == 3 and lines[2].startswith("| depth_3 | CIFAR-10 | 50 | 1,000 | 1,024 |")
    assert "| 512 | 8.59 GB | 2.15 GB |" in lines[2] and lines[2].endswith("| 1 | 100 | 195 |")
