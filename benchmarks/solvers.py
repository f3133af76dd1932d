"""How close each inner solver gets: the reference's Adam solves against conjugate gradients.

Both solvers pay one Hessian-vector product (one JVP + one VJP of the support) per
iteration, so the fair unit is the iteration count, not seconds. For Fashion-MNIST (real
data, preset depth_3_no_flip) at each ipc: the support a run starts from (seeded real
images, centred one-hot labels), ``--networks`` fresh networks of the preset and one real
target batch of 1,024 each. Learning rates are tuned by the reference rule, as a run does.
Then one full meta-gradient per solver setting, compared with a reference computed by CG
with ``--exact-iterations`` (CG is exact after n C + 1 iterations in exact arithmetic):

* ``delta_err`` = ||delta - delta*|| / ||delta*||, ``v_err`` = ||v - v*|| / ||v*||;
* ``cos_x``, ``cos_y``: cosine between the meta-gradient (direct + clipped implicit) and the
  reference one, for the images and the labels: what the outer optimiser actually sees.

    python benchmarks/solvers.py --ipcs 1 10 --out benchmarks/solvers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, NamedTuple

import torch

from speed import write_json  # benchmarks/ is on sys.path when this file runs as a script

SETTINGS = [("adam", 20), ("cg", 5), ("cg", 10), ("cg", 20)]


def relative_error(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).square().sum()) for k in b)
    den = sum(float(b[k].square().sum()) for k in b)
    return (num / den) ** 0.5


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


class Answers(NamedTuple):
    """A solver that keeps each answer it gives (the H^-1 g solve's v, which the meta-gradient
    uses but does not return)."""

    solver: Any  # a rcig.algorithm.inner.Solver
    answers: list

    def solve(self, objective):
        result = self.solver.solve(objective)
        self.answers.append(result.x)
        return result


def measure(ipc: int, networks: int, exact_iterations: int, seed: int) -> list[dict]:
    from rcig.algorithm.outer import init_support, tune_learning_rates
    from rcig.algorithm.inner import BaseNetwork, make_solvers, network, split_params
    from rcig.algorithm.meta import Batch, meta_gradient
    from rcig.config import load_preset
    from rcig.data import prepare
    from rcig.models import distillation_network

    prepared = prepare("fashion_mnist")
    ds = prepared.dataset
    cfg = load_preset("depth_3_no_flip")
    make_model = distillation_network(cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                      image_size=ds.image_size)
    g = torch.Generator().manual_seed(seed)
    support = init_support(prepared.x_train, prepared.y_train, ds.num_classes, ipc, "real", g)
    rows = []
    for net in range(networks):
        torch.manual_seed(seed + 100 + net)
        model = make_model()
        body0, head0 = split_params({k: v.detach() for k, v in model.named_parameters()})
        base = BaseNetwork(network(model, head0), body0)
        index = torch.randperm(len(prepared.x_train), generator=g)[:cfg.target_batch_size]
        target = Batch(prepared.x_train[index], prepared.y_train[index])
        started = time.perf_counter()
        inner_lr, hvp_lr = tune_learning_rates(base, support, target, cfg)
        print(f"ipc {ipc} network {net}: tuned inner_lr {inner_lr:.3g} hvp_lr {hvp_lr:.3g} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

        def run(solver: str, iterations: int):
            """(the meta-gradient, its v ~= H^-1 g_t) with ``iterations`` of ``solver`` per solve."""
            variant = cfg.replace(solver=solver, n_inner_steps=iterations, n_hinv_steps=iterations)
            solvers = make_solvers(variant, inner_lr, hvp_lr, 0)
            hinv = Answers(solvers.hinv, [])
            result = meta_gradient(base, support, target, variant, solvers._replace(hinv=hinv))
            return result, hinv.answers[0]

        exact, exact_v = run("cg", exact_iterations)
        for solver, iterations in SETTINGS:
            r, v = run(solver, iterations)
            row = {"ipc": ipc, "network": net, "solver": solver, "iterations": iterations,
                   "delta_err": relative_error(r.delta, exact.delta), "v_err": relative_error(v, exact_v),
                   "cos_x": cosine(r.grads["x"], exact.grads["x"]), "cos_y": cosine(r.grads["y"], exact.grads["y"]),
                   "inner_lr": inner_lr, "hvp_lr": hvp_lr,
                   "seconds_inner_and_hinv": round(r.seconds["inner_solve"] + r.seconds["hinv"], 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over networks per (ipc, solver, iterations)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["ipc"], row["solver"], row["iterations"]), []).append(row)
    keys = ("delta_err", "v_err", "cos_x", "cos_y")
    return [{"ipc": ipc, "solver": solver, "iterations": it, "networks": len(rs),
             **{k: sum(r[k] for r in rs) / len(rs) for k in keys}}
            for (ipc, solver, it), rs in sorted(groups.items())]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--networks", type=int, default=2, help="fresh networks per ipc (default 2)")
    parser.add_argument("--exact-iterations", type=int, default=200, help="CG iterations of the reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write {rows, summary, command} here as JSON")
    args = parser.parse_args(argv)
    rows = [row for ipc in args.ipcs for row in measure(ipc, args.networks, args.exact_iterations, args.seed)]
    result = {"rows": rows, "summary": summarise(rows), "command": " ".join(["python", *sys.argv]),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for s in result["summary"]:
        print(f"ipc {s['ipc']:>3} {s['solver']:>4} x{s['iterations']:<3} delta err {s['delta_err']:.3g}  "
              f"v err {s['v_err']:.3g}  cos x {s['cos_x']:.4f}  cos y {s['cos_y']:.4f}")
    if args.out:
        write_json(result, args.out)


if __name__ == "__main__":
    main()
