"""One command to check rcig on a CUDA GPU: tests, a timed distillation, its score, one table.

    python benchmarks/gpu_check.py                    # a CUDA machine: about 5 minutes (estimate)
    python benchmarks/gpu_check.py --device cpu --dataset digits --ipcs 1 --steps 2 \\
        --models 1 --eval-steps 20 --tiny --no-tests  # the CI's CPU run of this script

1. runs the tests that exercise a device (tests/test_devices.py with RCIG_TEST_DEVICE set);
2. distils ``--dataset`` (Fashion-MNIST) at each ``--ipcs`` for ``--steps`` outer steps on
   ``--device`` (the learning rates tuned first, as in a real run; not timed per step);
3. scores each set with the protocol (``--models`` networks per setting, both settings);
4. prints one table: s/step (median of the steps after the first) against this project's
   CPU figure for the same case (the speed table of benchmarks/results.json, the paper's
   preset on the gray 28 px shape), the scores, and minutes per case.

Exit status 1 when the tests fail or a score is not a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# tiny sizes for a CPU run of this script (as tests/test_distill.py's TINY)
TINY = {"width": 8, "pool_size": 3, "target_batch_size": 128, "max_online_steps": 6,
        "inner_lr": 3e-3, "hvp_lr": 3e-3}


def cpu_seconds_per_step(dataset: str, ipc: int) -> float | None:
    """The recorded CPU s/step of Fashion-MNIST's case at ``ipc`` (benchmarks/results.json), if any."""
    if dataset != "fashion_mnist":
        return None
    cases = json.loads((ROOT / "benchmarks" / "results.json").read_text()).get("speed", {}).get("cases", [])
    return next((c["seconds_per_step"] for c in cases if c["case"] == f"gray28:{ipc}"), None)


def run_tests(device: str) -> bool:
    env = {**os.environ, "RCIG_TEST_DEVICE": device, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "tests" / "test_devices.py")],
                          env=env, cwd=ROOT)
    return done.returncode == 0


def seconds_per_step(log: Path) -> float:
    """Median wall seconds of the logged steps after the first (which warms caches up)."""
    seconds = [r["seconds"] for r in map(json.loads, log.read_text().splitlines()) if "seconds" in r]
    return statistics.median(seconds[1:] or seconds)


def check_case(dataset: str, ipc: int, args, work: Path) -> dict:
    import rcig
    from rcig import parallel

    started = time.perf_counter()
    out = work / f"{dataset}_ipc{ipc}"
    rcig.distill(dataset, ipc, steps=args.steps, out=out, overrides=TINY if args.tiny else None,
                 progress=False, device=args.device, data_dir=args.data_dir)
    report = rcig.evaluate(out / "distilled.safetensors", models=args.models, steps=args.eval_steps,
                           data_dir=args.data_dir, progress=False, team=parallel.solo(args.device))
    return {"case": f"{dataset}:{ipc}", "s_per_step": seconds_per_step(out / "log.jsonl"),
            "cpu_s_per_step": None if args.tiny else cpu_seconds_per_step(dataset, ipc),
            "no_aug": report["no_aug"]["mean"], "aug": report["aug"]["mean"],
            "minutes": (time.perf_counter() - started) / 60}


def table(rows: list[dict], device: str, steps: int, models: int) -> str:
    lines = [f"rcig on {device}: {steps} outer steps per case, {models} network(s) per setting",
             "| case | s/step | CPU s/step (2 threads) | speed-up | no_aug | aug | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cpu = r["cpu_s_per_step"]
        speedup = f"{cpu / r['s_per_step']:.1f}x" if cpu else "-"
        lines.append(f"| {r['case']} | {r['s_per_step']:.2f} | {cpu or '-'} | {speedup} | "
                     f"{100 * r['no_aug']:.2f} | {100 * r['aug']:.2f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:K, cpu, mps")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--steps", type=int, default=40, help="outer steps per case (default 40)")
    parser.add_argument("--models", type=int, default=2, help="networks per setting (default 2)")
    parser.add_argument("--eval-steps", type=int, default=None, help="protocol steps (default: the protocol's)")
    parser.add_argument("--tiny", action="store_true", help="toy network and pool sizes (a CPU smoke run)")
    parser.add_argument("--no-tests", dest="tests", action="store_false", help="skip the device tests")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))

    started = time.perf_counter()
    tests_ok = run_tests(args.device) if args.tests else None
    with tempfile.TemporaryDirectory(prefix="rcig-gpu-check-") as work:
        rows = [check_case(args.dataset, ipc, args, Path(work)) for ipc in args.ipcs]
    print(table(rows, args.device, args.steps, args.models))
    tests = {True: "passed", False: "FAILED", None: "not run"}[tests_ok]
    print(f"device tests: {tests}; total {(time.perf_counter() - started) / 60:.1f} min")
    scores_ok = all(0 <= r[k] <= 1 for r in rows for k in ("no_aug", "aug"))
    return 0 if tests_ok is not False and scores_ok else 1


if __name__ == "__main__":
    sys.exit(main())
