"""The paper's evaluation protocol: train fresh networks on the support alone, then test.

For each of ``n_models`` seeds: a fresh network (ReLU ConvNet of the distillation depth by
default), MSE to the support's labels, Adam at 1e-4 with a linear warm-up over 500 steps and
a cosine decay to 1% of the peak at ``steps`` (1,000 for a support of at most 10 images,
2,000 otherwise); full-support batches (random batches of 256 above 256 images). Two
settings: without augmentation (which, as the reference, goes on at the floor rate to
``no_aug_extension * steps``) and with one random transform per image per step.

Test accuracy is measured in batches of 1,024 under inference mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import torch

from rcig.augment import augment_batch
from rcig.config import TEST_AUGMENTATIONS
from rcig.models import build_model
from rcig.models.init import apply_init


@dataclass(frozen=True)
class ProtocolSettings:
    arch: str = "conv"
    depth: int = 3
    width: int = 128
    norm: str = "none"
    lr: float = 1e-4
    warmup: int = 500
    steps: int | None = None  # None: 1000 for <= 10 support images, else 2000
    no_aug_extension: float = 2.5
    batch_size: int = 256
    n_models: int = 5
    augmentations: tuple[str, ...] = TEST_AUGMENTATIONS
    seed: int = 0
    test_limit: int | None = None
    settings: tuple[str, ...] = ("no_aug", "aug")  # which of the two settings to run
    # network init: the reference release's flax defaults (lecun-normal kernels, zero biases) or torch's ("torch")
    init: str = "reference"


def default_steps(n_images: int) -> int:
    return 1000 if n_images <= 10 else 2000


def learning_rate(step: int, peak: float, warmup: int, decay_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, cosine to 1% of it at ``decay_steps``,
    then constant at 1%."""
    floor = 0.01 * peak
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= decay_steps:
        return floor
    progress = (step - warmup) / max(1, decay_steps - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_models(settings: ProtocolSettings, in_channels: int, num_classes: int, image_size: int, seeds,
                device: torch.device = torch.device("cpu")) -> list:
    """One network per seed, initialised on the CPU (the same weights on every device) and moved."""
    models = []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(build_model(settings.arch, in_channels=in_channels, num_classes=num_classes,
                                      image_size=image_size, depth=settings.depth, width=settings.width,
                                      norm=settings.norm))
            apply_init(models[-1], settings.init)
            models[-1].to(device)
    return models


class Trained(NamedTuple):
    """Networks trained by :func:`train_models`, in eval mode, and which of them diverged."""

    models: list[torch.nn.Module]
    diverged: list[bool]  # per network: its loss became NaN or infinite, or so did a weight


def train_models(images: torch.Tensor, labels: torch.Tensor, settings: ProtocolSettings, *, augment: bool,
                 total_steps: int, decay_steps: int, seeds, progress=None) -> Trained:
    """Train one network per seed on (images, labels).

    Networks train one after another, in the default (NCHW) layout with a fused Adam, and
    are returned channels-last, the faster layout for the test pass (benchmarks/eval_speed.py
    compares the layouts, and training the networks together, in BENCHMARKS.md). A network
    whose loss is no longer finite stops training (checked every ``DIVERGENCE_CHECK`` steps)
    and is marked diverged; the others train exactly as without the check.
    """
    n, c, h, _ = images.shape
    models = make_models(settings, c, labels.shape[1], h, seeds, images.device)
    images = images.contiguous()
    diverged = []
    for model, seed in zip(models, seeds):
        diverged.append(_train_one(model, images, labels, settings, augment, total_steps, decay_steps,
                                   torch.Generator().manual_seed(10_000 + seed), progress))
        model.to(memory_format=torch.channels_last)
    return Trained(models, diverged)


def _batch(images, labels, settings, augment, g):
    if len(images) > settings.batch_size:
        idx = torch.randperm(len(images), generator=g)[:settings.batch_size]
        images, labels = images[idx], labels[idx]
    if augment:
        images = augment_batch(images, settings.augmentations, g)
    return images, labels


def _mse(logits, labels):
    return 0.5 * ((logits - labels) ** 2).mean()


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam, its update in one fused kernel per step: the for-loop Adam's arithmetic to float
    rounding, with fewer passes over the parameters (benchmarks/eval_speed.py)."""
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


DIVERGENCE_CHECK = 50  # steps between looks at the loss (one device sync each)


def _train_one(model, images, labels, settings, augment, total_steps, decay_steps, g, progress) -> bool:
    """Train ``model`` in place; True if it diverged (a non-finite loss or weight)."""
    model.train()
    opt = make_optimizer(model, settings.lr)
    finite = torch.ones((), dtype=torch.bool, device=images.device)
    for step in range(total_steps):
        x, y = _batch(images, labels, settings, augment, g)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings.lr, settings.warmup, decay_steps)
        opt.zero_grad(set_to_none=True)
        loss = _mse(model(x), y)
        loss.backward()
        opt.step()
        finite &= torch.isfinite(loss.detach())
        if progress is not None:
            progress.update(1)
        if (step + 1) % DIVERGENCE_CHECK == 0 and not bool(finite):
            if progress is not None:
                progress.update(total_steps - step - 1)
            break
    model.eval()
    state = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    return not bool(finite) or not all(bool(torch.isfinite(t).all()) for t in state)


@torch.inference_mode()
def accuracy(models, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> list[float]:
    """Test accuracy of each model, in large batches."""
    correct = torch.zeros(len(models), device=x.device)
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        for j, model in enumerate(models):
            correct[j] += (model(xb).argmax(1) == yb).sum()
    return (correct / len(x)).tolist()


def summarise(accs: list[float], diverged: list[bool] | None = None) -> dict:
    """``{"mean", "std" (population), "accs", "diverged"}`` of the networks' test accuracies:
    ``diverged`` lists the indices of the networks that diverged, and the mean and std are
    over the others (over all of them when every network diverged)."""
    diverged = [i for i, bad in enumerate(diverged or []) if bad]
    kept = [a for i, a in enumerate(accs) if i not in diverged] or accs
    t = torch.tensor(kept, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)) if len(kept) > 1 else 0.0, "accs": accs,
            "diverged": diverged}


def assign_jobs(costs: list[float], world: int) -> list[int]:
    """The rank of each job: longest first, each to the least-loaded rank so far (ties: the
    lowest rank). Deterministic, so every rank computes the same plan."""
    load, owner = [0.0] * world, [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        owner[j] = min(range(world), key=lambda r: (load[r], r))
        load[owner[j]] += costs[j]
    return owner


class Scored(NamedTuple):
    """One trained network's result."""

    accuracy: float  # on the test images, a fraction
    diverged: bool


class ScoreMemo(Protocol):
    """Where :func:`evaluate_support` finds networks already scored and records each one it
    scores, keyed by setting and seed (a memo serves one support under one protocol)."""

    def get(self, setting: str, seed: int) -> Scored | None: ...

    def put(self, setting: str, seed: int, scored: Scored) -> None: ...


def evaluate_support(images: torch.Tensor, labels: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     settings: ProtocolSettings, *, flip: bool = False, progress: bool = True, label: str = "set",
                     team=None, memo: ScoreMemo | None = None) -> dict:
    """Score a support set: {"no_aug": {"mean", "std", "accs", "diverged"}, "aug": {...}}
    (fractions; :func:`summarise`). ``label`` names the set in the progress (``evaluate LABEL``).

    ``team`` (:class:`rcig.parallel.Team`; None: one process on ``images``' device): the
    (setting, seed) networks are shared out over its ranks (:func:`assign_jobs`) and their
    accuracies summed into every rank's result, so each network scores what it would
    serially (same seed, same batches). Each rank trains on ``team.device``.

    ``memo``: networks it holds are not trained again (each network depends on its seed
    alone, so the others score as they would have), and each network trained is put in it
    as soon as it is tested. Every rank must see the same memo contents at the start.
    """
    from rcig.parallel import gather_sum, solo
    from rcig.progress import Progress

    team = team or solo(images.device)
    images, labels = images.detach().float().to(team.device), labels.detach().float().to(team.device)
    test_x, test_y = test_x.to(team.device), test_y.to(team.device)
    n_unique = len(images)
    if flip:
        images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
    steps = settings.steps or default_steps(n_unique)
    if settings.test_limit:
        test_x, test_y = test_x[:settings.test_limit], test_y[:settings.test_limit]
    seeds = [settings.seed + i for i in range(settings.n_models)]
    plan = {"no_aug": (False, max(steps, int(round(steps * settings.no_aug_extension)))), "aug": (True, steps)}
    plan = {k: v for k, v in plan.items() if k in settings.settings}
    jobs = [(name, seed) for name in plan for seed in seeds]
    known = {j: memo.get(*jobs[j]) for j in range(len(jobs))} if memo is not None else {}
    known = {j: scored for j, scored in known.items() if scored is not None}
    todo = [j for j in range(len(jobs)) if j not in known]
    owner = assign_jobs([plan[jobs[j][0]][1] for j in todo], team.world)
    mine = [j for j, rank in zip(todo, owner) if rank == team.rank]
    accs = torch.zeros(len(jobs), dtype=torch.float64)  # this rank's networks; zeros elsewhere
    diverged = torch.zeros(len(jobs), dtype=torch.float64)  # 1 for a network that diverged
    if team.leader:  # the memo's networks, counted once
        for j, scored in known.items():
            accs[j], diverged[j] = scored.accuracy, float(scored.diverged)
    warm = replace(settings, warmup=min(settings.warmup, max(1, steps // 2)))
    with Progress(sum(plan[jobs[j][0]][1] for j in mine), f"evaluate {label}", "step",
                  enabled=progress and team.leader) as bar:
        for j in mine:
            name, seed = jobs[j]
            augment, total_steps = plan[name]
            trained = train_models(images, labels, warm, augment=augment, total_steps=total_steps,
                                   decay_steps=steps, seeds=[seed], progress=bar)
            scored = Scored(accuracy(trained.models, test_x, test_y)[0], trained.diverged[0])
            accs[j], diverged[j] = scored.accuracy, float(scored.diverged)
            if memo is not None:
                memo.put(name, seed, scored)
    accs = gather_sum(accs, team).tolist()
    diverged = (gather_sum(diverged, team) > 0).tolist()
    return {name: summarise([accs[j] for j in range(len(jobs)) if jobs[j][0] == name],
                            [diverged[j] for j in range(len(jobs)) if jobs[j][0] == name]) for name in plan}
