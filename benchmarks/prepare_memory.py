"""Peak memory of preparing a dataset (``rcig.data.prepare``, the ZCA fit not cached) on
synthetic uint8 images of a given shape, against the estimate
(``rcig.data.preprocess.preparation_peak_bytes``).

    OMP_NUM_THREADS=1 python benchmarks/prepare_memory.py --train 50000 --test 10000 --size 32

Prints one JSON line: the peak RSS of the process and its RSS before preparing (GB, 1e9
bytes), the estimate of the preparation's peak (the process's BASE_GB included), the seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    args = parser.parse_args()

    from rcig.algorithm.memory import BASE_GB
    from rcig.data import Dataset, prepare
    from rcig.data.preprocess import preparation_peak_bytes

    rng = np.random.default_rng(0)
    shape = (args.size, args.size, args.channels)
    x_train = rng.integers(0, 256, (args.train, *shape), dtype=np.uint8)
    x_test = rng.integers(0, 256, (args.test, *shape), dtype=np.uint8)
    names = tuple(str(i) for i in range(10))
    dataset = Dataset("synthetic", x_train, np.arange(args.train) % 10, x_test, np.arange(args.test) % 10, names)
    del x_train, x_test
    before, start = peak_gb(), time.time()
    with tempfile.TemporaryDirectory() as cache:
        prepare(dataset, cache_dir=cache)
    estimate = BASE_GB + preparation_peak_bytes(args.train, args.test, args.channels, args.size) / 1e9
    print(json.dumps({"shape": [args.train, *shape], "test_images": args.test, "peak_rss_gb": round(peak_gb(), 3),
                      "rss_before_gb": round(before, 3), "estimate_gb": round(estimate, 3),
                      "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
