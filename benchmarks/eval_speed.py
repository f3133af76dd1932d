"""Steps per second of the evaluation protocol's training step, against the CPU's conv ceiling.

The protocol trains each network with fwd + bwd + Adam of the ReLU ConvNet (depth 3, width
128) on the whole support (batch 10 at 1 ipc, 100 at 10 ipc). Cases, synthetic data and
labels (speed does not depend on values), 10 classes:

    fashion1   10 images, 28 px gray (padded to 32)     fashion10  100 images, 28 px gray
    digits1    10 images, 8 px gray (padded to 12)      digits10   100 images, 8 px gray

each in both settings (``aug`` draws one transform per image per step). Variants per case:

    channels_last  the same step in the channels-last layout with a for-loop Adam
    protocol       ``protocol.train_models`` (NCHW, fused Adam)
    grouped        5 networks trained as one ConvNet whose convolutions have groups=5 on the
                   channel-concatenated batches (each network's own augmentation), fused Adam;
                   per network

A variant's time is thread CPU time (``time.thread_time``, run with OMP_NUM_THREADS=1):
this machine is shared, and wall time under load measures the neighbours. Variants are
interleaved over ``--repeats`` rounds; the minimum and the median per step are reported,
and their spread is the noise. GFLOP/s counts the convolutions and matrix products of one
fwd + bwd (FlopCounterMode, as benchmarks/speed.py); the ceiling is speed.py's: fwd + bwd of
the same ConvNet (same input size) at batch 256, by the same clock. The test pass
(``protocol.accuracy``, 2,048 images, one network) is timed the same way, forward only.

    OMP_NUM_THREADS=1 python benchmarks/eval_speed.py --out benchmarks/eval_speed.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import conv_ceiling, count_flops, cpu_name, write_json  # noqa: E402

from rcig.evaluation import ProtocolSettings, accuracy, augment_batch, learning_rate, train_models  # noqa: E402
from rcig.evaluation.protocol import make_models  # noqa: E402
from rcig.models import build_model  # noqa: E402

CASES = {"fashion1": (10, 28), "fashion10": (100, 28), "digits1": (10, 8), "digits10": (100, 8)}
STEPS = {"fashion1": 10, "fashion10": 2, "digits1": 60, "digits10": 30}  # per timing: ~1 s of CPU
GROUP = 5
NUM_CLASSES = 10
SETTINGS = ProtocolSettings()  # the protocol's defaults: depth 3, width 128, its transforms


def synthetic(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    y = F.one_hot(torch.arange(n) % NUM_CLASSES, NUM_CLASSES).float() - 1 / NUM_CLASSES
    return x, y


def channels_last_train(x, y, augment: bool, steps: int) -> None:
    """The protocol's training loop in the channels-last layout with a for-loop Adam."""
    model = make_models(SETTINGS, 1, NUM_CLASSES, x.shape[-1], [0])[0].to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=SETTINGS.lr)
    g = torch.Generator().manual_seed(10_000)
    for step in range(steps):
        xb = augment_batch(x, SETTINGS.augmentations, g) if augment else x
        opt.param_groups[0]["lr"] = learning_rate(step, SETTINGS.lr, SETTINGS.warmup, 1000)
        opt.zero_grad(set_to_none=True)
        (0.5 * ((model(xb) - y) ** 2).mean()).backward()
        opt.step()


def protocol_train(x, y, augment: bool, steps: int) -> None:
    train_models(x, y, SETTINGS, augment=augment, total_steps=steps, decay_steps=1000, seeds=[0])


def grouped_train(x, y, augment: bool, steps: int, m: int = GROUP) -> None:
    """``m`` ConvNets as one: conv weights concatenated along the output channels and
    groups=m, so network j sees input channels [j] only; classifier as a batched matmul."""
    nets = make_models(SETTINGS, 1, NUM_CLASSES, x.shape[-1], list(range(m)))
    convs = [[layer for layer in net.body if isinstance(layer, torch.nn.Conv2d)] for net in nets]
    weights = [torch.cat([c[i].weight for c in convs]).detach().requires_grad_() for i in range(len(convs[0]))]
    biases = [torch.cat([c[i].bias for c in convs]).detach().requires_grad_() for i in range(len(convs[0]))]
    head_w = torch.stack([net.classifier.weight for net in nets]).detach().requires_grad_()  # (m, C, F)
    head_b = torch.stack([net.classifier.bias for net in nets]).detach().requires_grad_()  # (m, C)
    opt = torch.optim.Adam([*weights, *biases, head_w, head_b], lr=SETTINGS.lr, fused=True)
    gens = [torch.Generator().manual_seed(10_000 + j) for j in range(m)]
    paddings = [conv.padding for conv in convs[0]]
    for step in range(steps):
        h = torch.cat([augment_batch(x, SETTINGS.augmentations, g) if augment else x for g in gens], 1)  # (n, m, H, W)
        for w, b, pad in zip(weights, biases, paddings):
            h = F.avg_pool2d(F.relu(F.conv2d(h, w, b, padding=pad, groups=m)), 2)
        features = h.reshape(len(x), m, -1).transpose(0, 1)  # (m, n, F)
        logits = torch.baddbmm(head_b.unsqueeze(1), features, head_w.transpose(1, 2))  # (m, n, C)
        opt.param_groups[0]["lr"] = learning_rate(step, SETTINGS.lr, SETTINGS.warmup, 1000)
        opt.zero_grad(set_to_none=True)
        (0.5 * ((logits - y) ** 2).mean(dim=(1, 2))).sum().backward()
        opt.step()


VARIANTS = {"channels_last": (channels_last_train, 1), "protocol": (protocol_train, 1), "grouped": (grouped_train, GROUP)}


def cpu_seconds(fn) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


def step_flops(size: int, batch: int) -> int:
    """FLOPs of one fwd + bwd of the protocol's ConvNet on ``batch`` images (Adam not counted)."""
    model = build_model("conv", in_channels=1, num_classes=NUM_CLASSES, image_size=size)
    x = torch.randn(batch, 1, size, size)
    return count_flops(lambda: model(x).square().mean().backward())


def time_steps(repeats: int) -> list[dict]:
    """Per (case, setting, variant): CPU seconds per step and per network, min and median."""
    runs = {}
    for case, (n, size) in CASES.items():
        x, y = synthetic(n, size)
        for augment in (False, True):
            for name, (train, _) in VARIANTS.items():  # warm-up: oneDNN primitives, allocator
                train(x, y, augment, 2)
            for _ in range(repeats):
                for name, (train, nets) in VARIANTS.items():
                    seconds = cpu_seconds(lambda: train(x, y, augment, STEPS[case]))
                    runs.setdefault((case, augment, name), []).append(seconds / STEPS[case] / nets)
            print(case, "aug" if augment else "no_aug",
                  {name: f"{min(runs[(case, augment, name)]) * 1e3:.1f} ms" for name in VARIANTS}, flush=True)
    rows = []
    for (case, augment, name), times in runs.items():
        n, size = CASES[case]
        rows.append({"case": case, "setting": "aug" if augment else "no_aug", "variant": name, "batch": n,
                     "seconds_per_step_min": min(times), "seconds_per_step_median": statistics.median(times),
                     "steps_per_s": 1 / min(times), "gflop_per_step": step_flops(size, n) / 1e9})
    return rows


def time_test_pass(repeats: int, size: int = 28, n: int = 2048) -> dict:
    model = train_models(*synthetic(10, size), SETTINGS, augment=False, total_steps=1, decay_steps=1, seeds=[0]).models[0]
    x, y = torch.randn(n, 1, size, size), torch.randint(0, NUM_CLASSES, (n,))
    accuracy([model], x[:64], y[:64])
    best = min(cpu_seconds(lambda: accuracy([model], x, y)) for _ in range(repeats))
    flops = count_flops(lambda: model(x[:64])) * n / 64
    return {"images": n, "seconds_per_10k_images": best * 10_000 / n, "gflops_per_s": flops / best / 1e9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case (default 3)")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    ceilings = {}
    for size in sorted({size for _, size in CASES.values()}, reverse=True):
        ceilings[size] = conv_ceiling(1, size, repeats=args.repeats, clock=time.thread_time)
        print(f"ceiling {size} px: {ceilings[size]['gflops_per_s']:.1f} GFLOP/s", flush=True)
    rows = time_steps(args.repeats)
    for row in rows:
        size = CASES[row["case"]][1]
        row["gflops_per_s"] = row["gflop_per_step"] / row["seconds_per_step_min"]
        row["fraction_of_ceiling"] = row["gflops_per_s"] / ceilings[size]["gflops_per_s"]
    test_pass = time_test_pass(args.repeats)
    test_pass["fraction_of_ceiling"] = test_pass["gflops_per_s"] / ceilings[28]["gflops_per_s"]
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
               "date": time.strftime("%Y-%m-%d"), "clock": "thread CPU time", "repeats": args.repeats,
               "ceiling": {f"{size}px": c for size, c in ceilings.items()}, "steps": rows, "test_pass_28px": test_pass}
    for row in rows:
        print(f"{row['case']:10s} {row['setting']:7s} {row['variant']:13s} {row['steps_per_s']:7.1f} steps/s "
              f"(median {1 / row['seconds_per_step_median']:7.1f})  {row['gflops_per_s']:6.1f} GFLOP/s  "
              f"{row['fraction_of_ceiling']:4.0%} of ceiling")
    print(f"test pass: {test_pass['seconds_per_10k_images']:.1f} s per 10k images, "
          f"{test_pass['fraction_of_ceiling']:.0%} of ceiling")
    if args.out:
        write_json(results, args.out)


if __name__ == "__main__":
    main()
