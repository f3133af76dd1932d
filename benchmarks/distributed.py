"""Data-parallel distillation: message sizes, a scaling estimate, and a ranks-vs-threads timing.

    python benchmarks/distributed.py sizes       # bytes all-reduced per outer step, 1/10/50 ipc
    python benchmarks/distributed.py estimate    # s/step on w ranks from BENCHMARKS.md's parts
    python benchmarks/distributed.py compare --steps 4   # 1 rank x 2 threads, then 2 ranks x 1
                                                          # thread, Fashion-MNIST 1 ipc, twice

Per outer step each rank sends one all-reduce of the direct gradient (x, y, log_temp), g_t
(the body tangent: every conv weight and bias and the final bias) and two scalars (outer
loss, accuracy), float32, plus one all-gather of 8 float64 (stop flags and the support
checksum). The inner solve, H^-1 g, the implicit gradient and the pool step run replicated
on every rank, so only the direct part (the target batch) divides by the ranks::

    T(w) = inner + hinv + implicit + pool + direct / w + allreduce(bytes, w)

Results and discussion: docs/parallel.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# BENCHMARKS.md speed table (2 threads, one step each): seconds per part of one outer step
PARTS = {"gray28:1": {"inner_solve": 1.5, "direct": 9.8, "hinv": 1.3, "implicit": 0.2, "pool": 0.1},
         "gray28:10": {"inner_solve": 12.7, "direct": 14.9, "hinv": 10.4, "implicit": 2.4, "pool": 0.5},
         "gray28:50": {"inner_solve": 76.5, "direct": 34.4, "hinv": 66.0, "implicit": 26.4, "pool": 3.2}}
SHAPES = {"gray28": (1, 28, "depth_3_no_flip"), "rgb32": (3, 32, "depth_3")}
LINKS = {"NVLink, 1 machine (~150 GB/s)": 150e9, "100 Gb/s InfiniBand": 12.5e9, "10 Gb/s Ethernet": 1.25e9}


def message_floats(shape: str, ipc: int, classes: int = 10) -> dict:
    """Floats in one step's all-reduce, by part (the support's unique rows: flips are not sent)."""
    sys.path.insert(0, str(ROOT / "src"))
    from rcig.algorithm.inner import split_params
    from rcig.config import load_preset
    from rcig.models import distillation_network

    channels, size, preset = SHAPES[shape]
    make = distillation_network(load_preset(preset), in_channels=channels, num_classes=classes, image_size=size)
    body, _ = split_params(dict(make().named_parameters()))
    n = classes * ipc
    return {"x": n * channels * size * size, "y": n * classes, "log_temp": 1,
            "g_t": sum(v.numel() for v in body.values()), "scalars": 2}


def ring_seconds(nbytes: float, ranks: int, bandwidth: float, latency: float = 20e-6) -> float:
    """A ring all-reduce: each rank sends and receives 2 (w - 1) / w of the buffer."""
    return 0.0 if ranks == 1 else 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * (ranks - 1) * latency


def cmd_sizes(_args) -> None:
    print("| case | x | y | g_t | total floats | MB per step (float32) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape in SHAPES:
        for ipc in (1, 10, 50):
            f = message_floats(shape, ipc)
            total = sum(f.values())
            print(f"| {shape}:{ipc} | {f['x']:,} | {f['y']:,} | {f['g_t']:,} | {total:,} | {4 * total / 1e6:.2f} |")


def cmd_estimate(_args) -> None:
    print("| case | 1 rank s/step | 2 | 4 | 8 | limit (w -> inf) | 8 ranks, all-reduce on " +
          " / ".join(LINKS) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, parts in PARTS.items():
        shape, ipc = case.split(":")
        nbytes = 4 * sum(message_floats(shape, int(ipc)).values())
        fixed = sum(v for k, v in parts.items() if k != "direct")
        t = {w: fixed + parts["direct"] / w for w in (1, 2, 4, 8)}
        comm = " / ".join(f"{1000 * ring_seconds(nbytes, 8, bw):.1f} ms" for bw in LINKS.values())
        print(f"| {case} | {t[1]:.1f} | {t[2]:.1f} ({t[1] / t[2]:.2f}x) | {t[4]:.1f} ({t[1] / t[4]:.2f}x) | "
              f"{t[8]:.1f} ({t[1] / t[8]:.2f}x) | {t[1] / fixed:.2f}x | {comm} |")


def timed_run(out: Path, steps: int, ranks: int, threads: int) -> dict:
    """One short Fashion-MNIST 1 ipc distillation; median s/step after the first and its parts."""
    cmd = [sys.executable, "-m", "rcig", "distill", "--dataset", "fashion_mnist", "--ipc", "1", "--steps", str(steps),
           "--seed", "0", "--no-eval", "--quiet", "--device", "cpu", "--out", str(out),
           "--set", "inner_lr=1e-4", "--set", "hvp_lr=1e-4"] + (["--workers", str(ranks)] if ranks > 1 else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][1:]
    parts = {k: statistics.median(r["parts"][k] for r in records) for k in records[0]["parts"]}
    return {"s_per_step": statistics.median(r["seconds"] for r in records), "parts": parts}


def cmd_compare(args) -> None:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(args.rounds):
            one = timed_run(Path(work) / f"one{round_}", args.steps, 1, 2)
            two = timed_run(Path(work) / f"two{round_}", args.steps, 2, 1)
            rows.append((one, two))
            print(json.dumps({"round": round_, "1x2": one, "2x1": two}))
    for one, two in rows:
        print(f"1 rank x 2 threads {one['s_per_step']:.1f} s/step, 2 ranks x 1 thread {two['s_per_step']:.1f} "
              f"s/step: ratio {one['s_per_step'] / two['s_per_step']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sizes").set_defaults(func=cmd_sizes)
    sub.add_parser("estimate").set_defaults(func=cmd_estimate)
    p = sub.add_parser("compare")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.set_defaults(func=cmd_compare)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
