"""Size of a run's checkpoint (checkpoints/latest.pt) per dataset and ipc, without long runs.

A checkpoint holds the support, its optimiser and EMA states (small), and the model pool: a
member that has not trained yet is its init seed alone, a trained one is its weights plus
its Adam moments (3 x the network's parameters). So the size grows with the number of pool
members that have trained, up to every member (the worst case, reached within ~100
iterations with the default pool of 30 and staying there). This script builds each run's
state with the dataset's preset, writes the checkpoint at iteration 0 (nothing trained) and
after training k members one pool step each, and reports the sizes::

    python benchmarks/checkpoint_size.py                      # digits 1, fashion_mnist 1 and 10
    python benchmarks/checkpoint_size.py --cases digits:1 --trained 0 5 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from rcig.run.checkpoint import save_checkpoint  # noqa: E402
from rcig.algorithm.outer import Distiller  # noqa: E402
from rcig.algorithm.optim import pool_loss  # noqa: E402
from rcig.run.driver import resolve_config  # noqa: E402
from rcig.data import prepare  # noqa: E402
from rcig.models import distillation_network  # noqa: E402


def sizes(spec: str, ipc: int, trained: list[int]) -> dict:
    """Checkpoint bytes with each count of trained pool members (one Adam step each)."""
    prepared = prepare(spec)
    ds = prepared.dataset
    cfg = resolve_config(ds, None, None, None)
    distiller = Distiller(prepared.x_train, prepared.y_train, ds.num_classes, ipc, cfg, 0,
                          distillation_network(cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                               image_size=ds.image_size))
    state = distiller.new_state()
    n_params = sum(v.numel() for v in state.pool.params(0).values())
    x, y = state.support["x"], state.support["y"]
    out, done = {}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in sorted(trained):
            for index in range(done, min(k, len(state.pool))):
                state.pool.train(index, lambda p: pool_loss(distiller.model, p, x, y), 1)
            done = min(k, len(state.pool))
            path = Path(tmp) / "latest.pt"
            save_checkpoint(path, state.to_dict())
            out[str(done)] = os.path.getsize(path)
    return {"dataset": spec, "ipc": ipc, "preset_pool_size": cfg.pool_size, "network_params": n_params,
            "bytes_by_trained_members": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["digits:1", "fashion_mnist:1", "fashion_mnist:10"])
    parser.add_argument("--trained", nargs="+", type=int, default=[0, 1, 10, 30])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    for case in args.cases:
        spec, _, ipc = case.partition(":")
        row = sizes(spec, int(ipc or 1), args.trained)
        results.append(row)
        cells = "  ".join(f"{k} trained: {v / 2 ** 20:7.1f} MiB" for k, v in row["bytes_by_trained_members"].items())
        print(f"{spec} ipc={row['ipc']} ({row['network_params']:,} parameters per network)  {cells}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
