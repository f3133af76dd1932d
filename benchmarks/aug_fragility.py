"""Where a set loses in the protocol's augmentation setting: one transform at a time.

Scores the *augmentation* setting of the protocol (its seeds, schedule and networks) for a
set saved by rcig, once per case, one network each by default::

    protocol      the protocol's transforms (as ``rcig eval``)
    <name>        that transform alone (crop, rotate, translate, cutout, ...)
    onehot        the protocol's transforms, the labels reset to centred one-hot
    steps=N       the protocol's transforms, N training steps instead of the default

    OMP_NUM_THREADS=1 python benchmarks/aug_fragility.py distilled/fashion_mnist_ipc1.safetensors \\
        --cases protocol,crop,rotate,translate,cutout,onehot --json out.json

BENCHMARKS.md has these cases for a ``fast`` set and for the herding set.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from rcig.config import AUGMENTATIONS
from rcig.data.sampling import centred_one_hot
from rcig.errors import RcigError
from rcig.evaluation import ProtocolSettings, evaluate_support


def case_inputs(case: str, labels: torch.Tensor, protocol: ProtocolSettings) -> tuple[torch.Tensor, ProtocolSettings]:
    """(labels, protocol settings) of one case; an RcigError names an unknown case."""
    if case == "protocol":
        return labels, protocol
    if case == "onehot":
        return centred_one_hot(labels.argmax(1), labels.shape[1]), protocol
    if case.startswith("steps="):
        steps = case.split("=", 1)[1]
        if not steps.isdigit() or int(steps) < 1:
            raise RcigError(f"steps=N needs a positive integer, got {case!r}")
        return labels, replace(protocol, steps=int(steps))
    if case in AUGMENTATIONS:
        return labels, replace(protocol, augmentations=(case,))
    raise RcigError(f"unknown case {case!r}; choose protocol, onehot, steps=N or one of {list(AUGMENTATIONS)}")


def main(argv=None) -> dict:
    from rcig.data import prepare
    from rcig.io import load
    from rcig.parallel import subnormals_flushed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("set", help="a set saved by rcig (.safetensors or .npz)")
    parser.add_argument("--cases", default="protocol,crop,rotate,translate,cutout,onehot")
    parser.add_argument("--models", type=int, default=1, help="protocol networks per case (default 1)")
    parser.add_argument("--steps", type=int, help="protocol training steps (default: the protocol's)")
    parser.add_argument("--test-limit", type=int, help="score on the first K test images only")
    parser.add_argument("--json", help="write {case: accuracy} here")
    args = parser.parse_args(argv)
    try:
        ds = load(args.set)
        protocol = ProtocolSettings(n_models=args.models, settings=("aug",), steps=args.steps,
                                    test_limit=args.test_limit)
        cases = {case: case_inputs(case, ds.labels, protocol) for case in args.cases.split(",")}
        prepared = prepare(ds.meta["dataset"])
    except RcigError as error:
        parser.exit(2, f"aug_fragility: error: {error}\n")
    scores, test_images = {}, prepared.test_images()
    with subnormals_flushed():
        for case, (labels, settings) in cases.items():
            result = evaluate_support(ds.images, labels, test_images, prepared.y_test, settings,
                                      flip=bool(ds.meta.get("flip")), progress=False)
            scores[case] = result["aug"]["mean"]
            print(f"{case:>12}: {100 * scores[case]:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"set": args.set, "models": args.models, "scores": scores}, indent=2))
    return scores


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
