"""The memory estimate against the measured steps, its refit, and the presets' tables.

    python benchmarks/memory_model.py fit [benchmarks/memory.json]   # constants refitted, each row's
                                                                     # estimate vs its measured peak
    python benchmarks/memory_model.py table                          # docs/memory.md's table
    python benchmarks/memory_model.py paper                          # BENCHMARKS' paper settings, measured

Two files of ``benchmarks/memory.py`` rows: ``memory.json``, the steps the constants are
fitted to (depths 3 to 5 on 28 and 32 px, mostly small data), and ``memory_paper.json``, the
paper's large settings on their datasets' sizes, which check the fit where it extrapolates
(larger images, supports and data) and are not fitted to.

``fit`` refits :class:`rcig.algorithm.memory.Fit` (least squares on the step's own memory,
:func:`rcig.algorithm.memory.fit`) and prints, for every row, the measured peak and the
estimate with the module's constants and with the refitted ones; put the refitted values in
``rcig/algorithm/memory.py`` when they are better on every row. ``table``: the paper's six
presets at their ipc on the real datasets' sizes, one graph and chunked, on a CPU and on
GPUs of common sizes. ``paper``: the rows of both files that ran one of those settings (its
data's size, the full pool), measured peak beside the estimate, and the seconds of the step
projected to the preset's solver iterations where the row cut them
(``--set n_inner_steps=1 --set n_hinv_steps=1``: the peak is one product's, not the count's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FITTED, PAPER = HERE / "memory.json", HERE / "memory_paper.json"  # the module docstring's two files
GPUS = (8, 12, 16, 24, 40, 80)  # GB
# (preset, dataset, data shape: channels, image size, classes, training images, test images, ipc)
SETTINGS = [("depth_3", "CIFAR-10", (3, 32, 10, 50_000, 10_000), 50),
            ("depth_3", "CIFAR-100", (3, 32, 100, 50_000, 10_000), 10),
            ("cifar100_50", "CIFAR-100", (3, 32, 100, 50_000, 10_000), 50),
            ("depth_4_200", "Tiny-ImageNet", (3, 64, 200, 100_000, 10_000), 1),
            ("depth_4_big", "Tiny-ImageNet", (3, 64, 200, 100_000, 10_000), 10),
            ("depth_5", "ImageNette", (3, 128, 10, 9_469, 3_925), 1),
            ("depth_5", "ImageNette", (3, 128, 10, 9_469, 3_925), 10)]


def gb(mib: float) -> float:
    """A row's MiB (as the rows record RSS) in GB (as the estimate and the tables give it)."""
    return mib * 2 ** 20 / 1e9


def preset_config(name: str, values: tuple):
    """The config of preset ``name`` on a setting's data shape (``values`` as in :data:`SETTINGS`)."""
    from rcig.config import load_preset

    return load_preset(name, values[1], values[0])


def row_estimate(row: dict, fit):
    """The estimate of a measured row's run (its data, pool and chunk size) under ``fit``."""
    from rcig.algorithm.memory import DataShape, estimate

    cfg = preset_config(row["preset"], (row["channels"], row["image_size"])).replace(
        **{**row["overrides"], "chunk_rows": row["chunk_rows"]})
    shape = DataShape(row["channels"], row["image_size"], row["classes"], row["train_images"], row["test_images"])
    return estimate(cfg, shape, row["ipc"], row["chunk_rows"], "cpu", row["pool_members"], fit)


def show_fit(path: Path) -> None:
    from rcig.algorithm.memory import FIT, fit

    rows = json.loads(path.read_text())
    refit = fit(rows)
    print("constants:", FIT, "\nrefitted: ", refit)
    print("| shape | ipc | target | chunk_rows | peak GB | estimate GB (error) | refitted (error) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        peak = gb(row["peak_rss_mb"])
        now, new = row_estimate(row, FIT).gb, row_estimate(row, refit).gb
        print(f"| {row['shape']} | {row['ipc']} | {row['target_batch']} | {row['chunk_rows']} | {peak:.2f} | "
              f"{now:.2f} ({now / peak - 1:+.0%}) | {new:.2f} ({new / peak - 1:+.0%}) |")


def table() -> list[str]:
    """docs/memory.md's table (markdown lines): a run's estimated peak in one graph on a GPU and
    on a CPU, in chunks of one row (the least it can need) on a GPU, and what a GPU of each
    size would run (the choice of chunk_rows "auto" for that much free memory)."""
    from rcig.algorithm.memory import FITS, DataShape, choose_chunk_rows, estimate

    lines = ["| preset | data | ipc | one graph, GPU | one graph, CPU | least (1-row chunks), GPU | "
             + " | ".join(f"{g} GB GPU" for g in GPUS) + " |", "| --- " * (6 + len(GPUS)) + "|"]
    for name, data, values, ipc in SETTINGS:
        shape = DataShape(*values)
        cfg = preset_config(name, values)
        gb = [estimate(cfg, shape, ipc, k, device).gb for k, device in ((None, "cuda"), (None, "cpu"), (1, "cuda"))]
        cells = []
        for size in GPUS:
            choice = choose_chunk_rows(cfg, shape, ipc, float(size), "cuda")
            cells.append("no" if choice.verdict != FITS else "one graph" if choice.chunk_rows is None
                         else f"chunks of {choice.chunk_rows}")
        lines.append(f"| {name} | {data} | {ipc} | " + " | ".join(f"{g:.1f} GB" for g in gb) + " | "
                     + " | ".join(cells) + " |")
    return lines


def projected_seconds(row: dict, cfg) -> float:
    """The seconds of a measured row's step with its preset's solver iterations: each solve's
    part grows by its one-iteration time per iteration the row cut (an upper bound: a solve's
    set-up is counted with every iteration; 129 s against 118 s measured for CIFAR-10 at 10 ipc
    in chunks of 32). ``cfg``: the row's preset on its data."""
    seconds = row["seconds_per_step"]
    for key, part in (("n_inner_steps", "inner_solve"), ("n_hinv_steps", "hinv")):
        ran = row["overrides"].get(key, getattr(cfg, key))
        seconds += row["parts"][part] / ran * (getattr(cfg, key) - ran)
    return seconds


def setting_row(rows: list[dict], preset: str, values: tuple, ipc: int, pool: int) -> dict | None:
    """The last of ``rows`` that ran a setting of :data:`SETTINGS` (its preset and ipc, its data's
    shape and size, the preset's full pool of ``pool`` members), or None."""
    ran = [r for r in rows if (r["preset"], r["ipc"], r["pool_members"]) == (preset, ipc, pool)
           and (r["channels"], r["image_size"], r["classes"], r["train_images"], r["test_images"]) == values]
    return ran[-1] if ran else None


def paper_rows(rows: list[dict]) -> list[str]:
    """BENCHMARKS' table of the paper's settings measured (markdown lines): for each setting of
    :data:`SETTINGS` the last row of ``rows`` that ran it (its preset, ipc and data's size, the
    full pool): the chunks taken, the peak beside the estimate, and the step's seconds."""
    from rcig.algorithm.memory import FIT, DataShape, estimate

    lines = ["| preset | data | ipc | support rows | target | one graph (estimate) | chunk_rows | peak RSS | "
             "before the step | estimate (error) | solver iterations | s/step as run | s/step, the preset's "
             "iterations |", "| --- " * 13 + "|"]
    for name, data, values, ipc in SETTINGS:
        cfg = preset_config(name, values)
        row = setting_row(rows, name, values, ipc, cfg.pool_size)
        if row is None:
            continue
        whole = estimate(cfg, DataShape(*values), ipc, None, "cpu").gb
        peak = gb(row["peak_rss_mb"])
        est = row_estimate(row, FIT).gb
        iterations = row["overrides"].get("n_inner_steps", cfg.n_inner_steps)
        lines.append(f"| {name} | {data} | {ipc} | {row['support_rows']:,} | {row['target_batch']:,} | {whole:.1f} GB | "
                     f"{row['chunk_rows'] or 'none'} | {peak:.2f} GB | {gb(row['rss_before_step_mb']):.2f} GB | "
                     f"{est:.2f} GB ({est / peak - 1:+.0%}) | {iterations} | {row['seconds_per_step']:.0f} | "
                     f"{projected_seconds(row, cfg):.0f} |")
    return lines


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fit"]:
        show_fit(Path(argv[1]) if len(argv) > 1 else FITTED)
    elif argv[:1] == ["table"]:
        print("\n".join(table()))
    elif argv[:1] == ["paper"]:
        print("\n".join(paper_rows([row for path in (FITTED, PAPER) for row in json.loads(path.read_text())])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
