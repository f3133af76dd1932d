"""Peak memory and seconds of ONE outer step, by ``chunk_rows``, next to rcig's estimate.

Each run is its own subprocess, so its peak resident memory (VmHWM) is the step's own plus
what the process holds before it (Python, torch, the data, the pool), reported separately
as the RSS just before the step. The data are synthetic of the dataset's shape and size
(memory and time do not depend on pixel values), held as a run holds them
(:class:`rcig.data.Prepared`: the training images in model space, float32, the test images
as loaded, uint8), by default as many as the real dataset's (``--train-images``,
``--test-images``). The model pool holds every member's
weights and Adam moments, as a run's does once it has trained each (``--pool-members``;
0: only the member the step trains). The config is the preset (default: the paper's for the
shape) with fixed learning rates (tuning is not part of a step), ``init=real`` (herding
embeds the training set first) and any ``--set`` overrides.

    python benchmarks/memory.py --shape fashion --ipc 1 --chunk-rows none 64 --set target_batch_size=256
    python benchmarks/memory.py --shape cifar100 --ipc 10 --chunk-rows none auto 256 --out benchmarks/memory.json

``--chunk-rows``: ``none`` is the one-graph step, ``auto`` the size a run would choose from
this machine's available memory, at most ``--memory-gb`` (``--memory-gb 16 --chunk-rows auto``:
the step a 16 GB device would run; ``rcig.algorithm.memory.choose_chunk_rows``; where it fits
at no size, the run fails with rcig's refusal), a number sets it. Each row records the
estimate (``rcig.algorithm.memory.estimate``, of the same data, pool and chunk size) beside
the measured peak. With ``--out``, rows are appended to the
JSON file (created if missing) as each run ends.
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

# name -> (classes, channels, image size, training images, test images) of the real dataset
SHAPES = {"fashion": (10, 1, 28, 60_000, 10_000), "cifar10": (10, 3, 32, 50_000, 10_000),
          "cifar100": (100, 3, 32, 50_000, 10_000), "tiny": (200, 3, 64, 100_000, 10_000),
          "imagenette": (10, 3, 128, 9_469, 3_925)}


def held_data(shape: str, train_images: int, test_images: int, generator: torch.Generator):
    """Synthetic data of ``shape`` as a run holds it, a :class:`rcig.data.Prepared`."""
    from rcig.data import DatasetInfo, Prepared, Preprocessor

    classes, channels, size = SHAPES[shape][:3]
    info = DatasetInfo(shape, tuple(str(c) for c in range(classes)), channels, size)
    test = torch.randint(0, 256, (test_images, size, size, channels), dtype=torch.uint8, generator=generator)
    return Prepared(info, Preprocessor("standardize", [0.5] * channels, [0.25] * channels),
                    torch.randn(train_images, channels, size, size, generator=generator),
                    torch.arange(train_images) % classes, test.numpy(), torch.arange(test_images) % classes)


def fill_pool(pool, members: int) -> None:
    """Give ``members`` of the pool their weights and Adam moments, as a run's pool holds them
    once it has trained each (the same weights it would build when first picked)."""
    for index in range(min(members, len(pool))):
        pool.members[index]["adam"] = pool.members[index]["adam"] or pool.adam.init(pool.params(index))


def one_step(shape: str, ipc: int, preset: str | None, chunk_rows: str, overrides: dict, train_images: int,
             test_images: int, pool_members: int | None, memory_gb: float | None = None) -> dict:
    """Build a run of ``shape`` at ``ipc`` and time one outer step (inside the child process)."""
    from rcig.algorithm.memory import NEVER, DataShape, choose_chunk_rows, estimate, refusal
    from rcig.algorithm.meta import support_row_count
    from rcig.algorithm.outer import Distiller
    from rcig.config import AUTO, default_preset_name, load_preset
    from rcig.models import distillation_network
    from rcig.parallel import memory_available, within_budget

    classes, channels, size = SHAPES[shape][:3]
    preset = preset or default_preset_name(size, channels)
    cfg = load_preset(preset, size, channels).replace(**{"inner_lr": 1e-4, "hvp_lr": 1e-4, "init": "real", **overrides})
    g = torch.Generator().manual_seed(0)
    n_train = max(train_images, cfg.target_batch_size, 2 * classes * ipc)
    held = held_data(shape, n_train, test_images, g)
    data = DataShape(channels, size, classes, n_train, test_images)
    available = within_budget(memory_available(torch.device("cpu")), memory_gb)
    asked = AUTO if chunk_rows == AUTO else None if chunk_rows == "none" else int(chunk_rows)
    choice = choose_chunk_rows(cfg.replace(chunk_rows=asked), data, ipc, available.gb)
    if asked == AUTO and choice.verdict == NEVER:  # what rcig distill would refuse
        raise SystemExit(f"chunk_rows=auto: {refusal(choice, available.gb)}")
    cfg = cfg.replace(chunk_rows=choice.chunk_rows)
    distiller = Distiller(held.x_train, held.y_train, classes, ipc, cfg, 0,
                          distillation_network(cfg, in_channels=channels, num_classes=classes, image_size=size))
    state = distiller.new_state()
    fill_pool(state.pool, cfg.pool_size if pool_members is None else pool_members)
    before = rss_mb()
    started = time.perf_counter()
    record = distiller.step(state)
    seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    members = sum(member["adam"] is not None for member in state.pool.members)  # the step's member included
    est = estimate(cfg, data, ipc, cfg.chunk_rows, "cpu", members)
    return {"shape": shape, "classes": classes, "channels": channels, "image_size": size, "ipc": ipc,
            "preset": preset, "overrides": overrides, "chunk_rows": cfg.chunk_rows, "asked": chunk_rows,
            "support_rows": support_row_count(classes * ipc, cfg.flip), "target_batch": cfg.target_batch_size,
            "train_images": n_train, "test_images": test_images, "pool_members": members,
            "available_gb": available.gb, "threads": torch.get_num_threads(),
            "seconds_per_step": seconds, "parts": record["parts"], "rss_before_step_mb": before,
            "peak_rss_mb": peak, "estimate_gb": est.gb,
            "estimate_parts_gb": {"process": est.process_gb, "data": est.data_gb, "pool": est.pool_gb,
                                  "step": est.step_gb}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--ipc", type=int, required=True)
    parser.add_argument("--preset", default=None, help="default: the paper's preset for the shape")
    parser.add_argument("--chunk-rows", nargs="+", default=["none"],
                        help="'none', 'auto' or rows per chunk, one run each")
    parser.add_argument("--train-images", type=int, default=None, help="default: the real dataset's")
    parser.add_argument("--test-images", type=int, default=None, help="default: the real dataset's")
    parser.add_argument("--pool-members", type=int, default=None,
                        help="pool members holding weights and moments (default: all, a run's steady state)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="what 'auto' may count on (as rcig distill --memory-gb), e.g. 16 for a 16 GB claim")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="append the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for chunk in args.chunk_rows:
        if chunk not in ("none", "auto") and not chunk.isdigit():
            parser.error(f"--chunk-rows: 'none', 'auto' or a row count, got {chunk!r}")
    train_images = SHAPES[args.shape][3] if args.train_images is None else args.train_images
    test_images = SHAPES[args.shape][4] if args.test_images is None else args.test_images
    from rcig.config import parse_overrides

    overrides = parse_overrides(args.set)

    if args.child:  # one run, its row as JSON on stdout; subnormals flushed as rcig's commands do
        from rcig.parallel import subnormals_flushed

        torch.set_num_threads(args.threads)
        with subnormals_flushed():
            print(json.dumps(one_step(args.shape, args.ipc, args.preset, args.chunk_rows[0], overrides, train_images,
                                      test_images, args.pool_members, args.memory_gb)))
        return

    rows = json.load(open(args.out)) if args.out and os.path.exists(args.out) else []
    for chunk in args.chunk_rows:
        command = [sys.executable, __file__, "--child", "--shape", args.shape, "--ipc", str(args.ipc),
                   "--chunk-rows", chunk, "--threads", str(args.threads), "--train-images", str(train_images),
                   "--test-images", str(test_images)]
        command += ["--pool-members", str(args.pool_members)] if args.pool_members is not None else []
        command += ["--memory-gb", str(args.memory_gb)] if args.memory_gb is not None else []
        command += (["--preset", args.preset] if args.preset else []) + [a for s in args.set for a in ("--set", s)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"chunk_rows={chunk}: failed (exit {out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update({"torch": torch.__version__, "date": time.strftime("%Y-%m-%d")})
        rows.append(row)
        print(f"{args.shape} ipc {args.ipc} chunk_rows={chunk} ({row['chunk_rows']}): "
              f"{row['seconds_per_step']:.1f} s/step, "
              f"peak {row['peak_rss_mb']:.0f} MB (before the step {row['rss_before_step_mb']:.0f} MB, "
              f"estimate {row['estimate_gb']:.1f} GB)", flush=True)
        if args.out:
            write_json(rows, args.out)


if __name__ == "__main__":
    main()
