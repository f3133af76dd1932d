"""Seconds per RCIG outer step, its breakdown, peak memory and the CPU's conv ceiling.

Each (input shape, ipc) case runs in its own subprocess, so its peak RSS is its own:
synthetic data (speed does not depend on pixel values), the paper's preset for the shape
(28 px gray: depth_3_no_flip; 32 px RGB: depth_3 with the flip trick), the full pool of 30
networks, fixed learning rates (tuning time is not part of a step). One warm-up step, then
the mean of ``--steps`` timed steps. The warm-up step's FLOPs are counted by torch's
FlopCounterMode (convolutions and matmuls in the forward, forward-mode and backward passes),
and the step's achieved GFLOP/s is divided by the same CPU's measured ceiling: fwd+bwd GFLOP/s of the distillation ConvNet alone on a
batch of 256 images.

    python benchmarks/speed.py --out benchmarks/speed.json            # all cases
    python benchmarks/speed.py --cases gray28:1 rgb32:1 --steps 1     # a subset
    python benchmarks/speed.py --cases gray28:10 gray28:10:cg5        # the reference's Adam
                                                                      # solves vs 5 CG iterations
    OMP_NUM_THREADS=2 python benchmarks/speed.py --cases gray28:10:fast   # --preset fast's step

A case is ``shape:ipc`` or ``shape:ipc:variant``; a variant overrides config fields of the
preset (``VARIANTS``).

With ``--out``, results are written after every case and a second call with the same
``--out`` goes on with the cases not done yet (delete the file to measure afresh).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

SHAPES = {"gray28": (1, 28, "depth_3_no_flip"), "rgb32": (3, 32, "depth_3")}
# config overrides named by a case's third field
CG5 = {"solver": "cg", "n_inner_steps": 5, "n_hinv_steps": 5}
# "fast": the step of --preset fast (its other changes, the support's rate and start, cost nothing)
VARIANTS = {"cg5": CG5, "fast": {**CG5, "target_batch_size": 256}}
DEFAULT_CASES = [f"{s}:{ipc}" for s in SHAPES for ipc in (1, 10, 50)] + ["gray28:1:cg5", "gray28:10:cg5"]
NUM_CLASSES = 10


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (kB there), in MB; NaN where there is none."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """The process's resident memory now (VmRSS), MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (VmHWM), MB."""
    return _status_mb("VmHWM")


def conv_ceiling(channels: int, size: int, batch: int = 256, repeats: int = 3, clock=time.perf_counter) -> dict:
    """fwd+bwd GFLOP/s of the distillation ConvNet (ReLU, width 128, depth 3) in isolation,
    the best of ``repeats`` timings by ``clock`` (wall time by default)."""
    from torch.utils.flop_counter import FlopCounterMode

    from rcig.models import build_model

    model = build_model("conv", in_channels=channels, num_classes=NUM_CLASSES, image_size=size, depth=3, width=128)
    x = torch.randn(batch, channels, size, size)

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    fwd_bwd()
    with FlopCounterMode(display=False) as counter:
        fwd_bwd()
    best = min(_timed(fwd_bwd, clock) for _ in range(repeats))
    flops = counter.get_total_flops()
    return {"batch": batch, "gflop": flops / 1e9, "seconds": best, "gflops_per_s": flops / best / 1e9}


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose forward hooks fail inside
    torch.func transforms (torch 2.13); every FLOP is then counted under "Global"."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def count_flops(fn) -> int:
    """FLOPs of the convolutions and matrix products ``fn()`` runs (forward, JVP and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()
    with counter:
        fn()
    return counter.get_total_flops()


def _timed(fn, clock=time.perf_counter) -> float:
    started = clock()
    fn()
    return clock() - started


def parse_case(case: str) -> tuple[str, int, dict]:
    """``shape:ipc[:variant]`` -> (shape, ipc, config overrides); ValueError if malformed."""
    shape, _, rest = case.partition(":")
    ipc, _, variant = rest.partition(":")
    if shape not in SHAPES or not ipc.isdigit() or int(ipc) < 1 or (variant and variant not in VARIANTS):
        raise ValueError(f"bad case {case!r}: expected shape:ipc[:variant] with shape in {sorted(SHAPES)}, "
                         f"variant in {sorted(VARIANTS)}")
    return shape, int(ipc), VARIANTS[variant] if variant else {}


def run_case(case: str, steps: int) -> dict:
    """Time ``steps`` outer steps of one case (runs inside the child process)."""
    from rcig.algorithm.meta import support_row_count
    from rcig.algorithm.outer import Distiller
    from rcig.config import load_preset
    from rcig.models import distillation_network

    shape, ipc, overrides = parse_case(case)
    channels, size, preset = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    n_train = 4096
    x_train = torch.randn(n_train, channels, size, size, generator=g)
    y_train = torch.arange(n_train) % NUM_CLASSES
    cfg = load_preset(preset).replace(inner_lr=1e-4, hvp_lr=1e-4, steps=steps + 1, **overrides)
    distiller = Distiller(x_train, y_train, NUM_CLASSES, ipc, cfg, 0,
                          distillation_network(cfg, in_channels=channels, num_classes=NUM_CLASSES, image_size=size))
    state = distiller.new_state()
    # the warm-up step (untimed) is the one whose FLOPs are counted: a step's shapes do not
    # change, only the pool network's randint(1, 16) training steps do (a small share)
    flops = count_flops(lambda: distiller.step(state))
    records = [distiller.step(state) for _ in range(steps)]
    parts = {k: sum(r["parts"][k] for r in records) / steps for k in records[0]["parts"]}
    seconds = sum(r["seconds"] for r in records) / steps
    rss = peak_rss_mb()
    return {"case": case, "preset": preset, "overrides": overrides, "ipc": ipc, "support_rows": support_row_count(ipc * NUM_CLASSES, cfg.flip),
            "target_batch": cfg.target_batch_size, "steps_timed": steps, "seconds_per_step": seconds,
            "parts": parts, "gflop_per_step": flops / 1e9 if flops else None,
            "achieved_gflops_per_s": flops / seconds / 1e9 if flops else None, "peak_rss_mb": rss}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="shape:ipc, e.g. gray28:1 rgb32:10")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per case (after one warm-up)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for case in args.cases:
        try:
            parse_case(case)
        except ValueError as exc:
            parser.error(str(exc))

    if args.child:  # inside a subprocess: one case, JSON on stdout; subnormals flushed as rcig's commands do
        from rcig.parallel import subnormals_flushed

        with subnormals_flushed():
            print(json.dumps(run_case(args.child, args.steps)))
        return

    if args.out and os.path.exists(args.out):  # go on from a stopped run: keep its ceiling and cases
        with open(args.out) as fh:
            results = json.load(fh)
        print(f"resuming {args.out}: {len(results['cases'])} case(s) done", flush=True)
    else:
        results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
                   "date": time.strftime("%Y-%m-%d"), "ceiling": {}, "cases": []}
        for shape, (channels, size, _) in SHAPES.items():
            results["ceiling"][shape] = conv_ceiling(channels, size)
            print(f"ceiling {shape}: {results['ceiling'][shape]['gflops_per_s']:.1f} GFLOP/s", flush=True)
        if args.out:
            write_json(results, args.out)
    done = {row["case"] for row in results["cases"]}
    for case in (c for c in args.cases if c not in done):
        out = subprocess.run([sys.executable, __file__, "--child", case, "--steps", str(args.steps)],
                             capture_output=True, text=True, env=os.environ.copy())
        if out.returncode != 0:
            print(f"{case}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        shape = case.split(":")[0]
        achieved = row["achieved_gflops_per_s"]
        row["fraction_of_ceiling"] = achieved / results["ceiling"][shape]["gflops_per_s"] if achieved else None
        results["cases"].append(row)
        fraction = f"{row['fraction_of_ceiling']:.0%}" if row["fraction_of_ceiling"] else "?"
        print(f"{case:10s} {row['seconds_per_step']:7.2f} s/step  {row['peak_rss_mb']:7.0f} MB  "
              f"{fraction} of ceiling  parts {row['parts']}", flush=True)
        if args.out:  # after every case, so that a stopped run keeps the cases it finished
            write_json(results, args.out)


def write_json(results: dict, path) -> None:
    """Write ``results`` as indented JSON atomically (:func:`rcig.atomic.atomic_write`)."""
    from rcig.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
