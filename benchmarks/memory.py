"""Peak memory and seconds of ONE outer step, with and without ``chunk_rows``.

Each run is its own subprocess, so its peak resident memory (VmHWM) is the step's
own plus the process's fixed cost (Python, torch, the synthetic training set, the pool),
which is reported separately as the RSS just before the step. The data are synthetic of the
right shape (memory and time do not depend on pixel values); the config is the preset
(default: the paper's for the shape) with fixed learning rates (tuning is not part of a
step), ``init=real`` (herding embeds the training set first) and any ``--set`` overrides.

    python benchmarks/memory.py --shape fashion --ipc 1 --chunk-rows none 64 --set target_batch_size=256
    python benchmarks/memory.py --shape cifar100 --ipc 10 --chunk-rows none 256 --out benchmarks/memory.json

``--chunk-rows none`` is the one-graph step; every other value sets ``chunk_rows``. With
``--out``, rows are appended to the JSON file (created if missing) as each run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from speed import peak_rss_mb, rss_mb, write_json  # benchmarks/ is on sys.path when run as a script

# name -> (classes, channels, image size, training images to draw the support and targets from)
SHAPES = {"fashion": (10, 1, 28), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32), "tiny": (200, 3, 64),
          "imagenette": (10, 3, 128)}


def one_step(shape: str, ipc: int, preset: str | None, chunk_rows: int | None, overrides: dict) -> dict:
    """Build a run of ``shape`` at ``ipc`` and time one outer step (inside the child process)."""
    from rcig.algorithm.memory import step_memory
    from rcig.algorithm.meta import support_row_count
    from rcig.algorithm.outer import Distiller
    from rcig.config import default_preset_name, load_preset
    from rcig.models import distillation_network

    classes, channels, size = SHAPES[shape]
    preset = preset or default_preset_name(size, channels)
    cfg = load_preset(preset, size, channels).replace(
        **{"inner_lr": 1e-4, "hvp_lr": 1e-4, "init": "real", **overrides, "chunk_rows": chunk_rows})
    g = torch.Generator().manual_seed(0)
    n_train = max(cfg.target_batch_size, 2 * classes * ipc)
    x_train = torch.randn(n_train, channels, size, size, generator=g)
    y_train = torch.arange(n_train) % classes
    distiller = Distiller(x_train, y_train, classes, ipc, cfg, 0,
                          distillation_network(cfg, in_channels=channels, num_classes=classes, image_size=size))
    state = distiller.new_state()
    before = rss_mb()
    started = time.perf_counter()
    record = distiller.step(state)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    rows = support_row_count(classes * ipc, cfg.flip)
    return {"shape": shape, "classes": classes, "channels": channels, "image_size": size, "ipc": ipc,
            "preset": preset, "overrides": overrides, "chunk_rows": cfg.chunk_rows, "support_rows": rows,
            "target_batch": cfg.target_batch_size, "threads": torch.get_num_threads(),
            "seconds_per_step": seconds, "parts": record["parts"], "rss_before_step_mb": before,
            "peak_rss_mb": peak, "estimate_gb": step_memory(cfg, rows, channels, size, classes).gb}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--preset", default=None, help="default: the paper's preset for the shape")
    parser.add_argument("--chunk-rows", nargs="+", default=["none"], help="'none' or rows per chunk, one run each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="append the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chunks = [None if c == "none" else int(c) for c in args.chunk_rows]
    from rcig.config import parse_overrides

    overrides = parse_overrides(args.set)

    if args.child:  # one run, its row as JSON on stdout; subnormals flushed as rcig's commands do
        from rcig.parallel import subnormals_flushed

        torch.set_num_threads(args.threads)
        with subnormals_flushed():
            print(json.dumps(one_step(args.shape, args.ipc, args.preset, chunks[0], overrides)))
        return

    rows = json.load(open(args.out)) if args.out and os.path.exists(args.out) else []
    for chunk in args.chunk_rows:
        command = [sys.executable, __file__, "--child", "--shape", args.shape, "--ipc", str(args.ipc),
                   "--chunk-rows", chunk, "--threads", str(args.threads)]
        command += (["--preset", args.preset] if args.preset else []) + [a for s in args.set for a in ("--set", s)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"chunk_rows={chunk}: failed (exit {out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update({"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")})
        rows.append(row)
        print(f"{args.shape} ipc {args.ipc} chunk_rows={chunk}: {row['seconds_per_step']:.1f} s/step, "
              f"peak {row['peak_rss_mb']:.0f} MB (before the step {row['rss_before_step_mb']:.0f} MB, "
              f"estimate {row['estimate_gb']:.1f} GB)", flush=True)
        if args.out:
            write_json(rows, args.out)


if __name__ == "__main__":
    main()
