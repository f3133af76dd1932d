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
