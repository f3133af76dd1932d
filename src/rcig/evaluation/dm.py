"""Distribution Matching (DM; Zhao and Bilen, "Dataset Condensation with Distribution
Matching", WACV 2023, arXiv 2110.04181): a peer method, made by ``rcig baseline --method dm``
and scored under the same protocol as RCIG's sets.

The synthetic images S (``ipc`` per class, class-ordered) start as given (``rcig baseline``:
the random-real baseline of the same seed) and keep their hard labels (centred one-hot). Each iteration draws

* a fresh embedding network psi, randomly initialised and never trained: the paper's ConvNet
  without its classifier, ``depth`` blocks of [3x3 conv of ``width`` channels in every block,
  instance norm, ReLU, 2x2 average pool] (depth 3 and width 128 by default; ``rcig baseline``
  takes the depth the paper uses at the data's resolution, 3 below 64 px), with torch's
  default initialisation, as in the authors' release (the instance norms leave the features
  nearly independent of each conv's bias and of any positive rescaling of its weights);
* for each class c, a batch B_c of ``real_batch`` real images of c (all of them if the
  class is smaller) and one augmentation A_c: one transform with one draw of its parameters,
  applied alike to B_c and to S_c (:func:`rcig.augment.augment_alike`, the Siamese
  augmentation);

and takes one step of SGD with momentum on the images alone, down the gradient of

    L(S) = sum_c || mean_{x in B_c} psi(A_c(x)) - mean_{s in S_c} psi(A_c(s)) ||^2

(the squared distance between the class means of the embeddings). The real means are
constants of the step, computed without a graph. The step, with g = dL/dS::

    v <- momentum * v + g
    S <- S - lr * v

Defaults (:class:`DMSettings`) are the paper's: learning rate 1 and momentum 0.5 for the
images, 256 real images per class, 20,000 iterations, the network above. The paper's
differentiable Siamese augmentations (colour, crop, cutout, flip, scale, rotate) are rcig's
six transforms (``rcig.config.AUGMENTATIONS``: ``translate`` is the shift the paper calls
crop, ``crop`` the zoom it calls scale) with rcig's magnitudes (:mod:`rcig.augment`); a
drawn ``flip`` flips the class's batches, where the paper's flips them with probability 1/2.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence

import torch

from rcig.augment import augment_alike
from rcig.config import AUGMENTATIONS
from rcig.models import build_model


KEEP_EVERY = 60.0  # wall seconds between two hand-overs of a run's progress to be stored


class DMSettings(NamedTuple):
    """DM's hyperparameters and its embedding network's shape, the paper's."""

    iterations: int = 20_000
    lr: float = 1.0
    momentum: float = 0.5
    real_batch: int = 256
    augmentations: tuple[str, ...] = AUGMENTATIONS
    depth: int = 3
    width: int = 128  # channels of every block
    norm: str = "instance"


class DMState(NamedTuple):
    images: torch.Tensor    # (C * ipc, ch, H, W) the synthetic images, class-ordered
    velocity: torch.Tensor  # SGD's momentum buffer, the images' shape
    iteration: int          # steps taken


class DMResult(NamedTuple):
    images: torch.Tensor    # (C * ipc, ch, H, W)
    labels: torch.Tensor    # (C * ipc, C) centred one-hot
    iterations: int         # steps taken (the budget may stop before DMSettings.iterations)
    losses: list[float]     # L(S) before each step
    stopped: bool = False   # ended early because ``stop`` asked (the images are then not a finished set)


class DMProgress(NamedTuple):
    """Where a DM run stands: enough to go on exactly as if it had not stopped."""

    state: DMState
    generator: torch.Tensor  # the draws' generator state
    losses: list[float]      # L(S) before each step so far
    seconds: float           # wall seconds the run has spent so far (a call going on counts them in its budget)


def matching_loss(embed: Callable[[torch.Tensor], torch.Tensor], real: Sequence[torch.Tensor],
                  synthetic: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_c || mean_i embed(real[c])_i - mean_j embed(synthetic[c])_j ||^2, a scalar.

    real[c]: (n_c, ch, H, W), embedded without a graph (constants); synthetic[c]: (ipc, ch, H, W),
    the tensors the gradient reaches. ``embed`` maps (n, ch, H, W) to features (n, D).
    """
    if len(real) != len(synthetic):
        raise ValueError(f"{len(real)} real batches for {len(synthetic)} synthetic ones")
    total = torch.zeros((), dtype=synthetic[0].dtype, device=synthetic[0].device)
    for r, s in zip(real, synthetic):
        with torch.no_grad():
            target = embed(r).mean(0)
        total = total + (target - embed(s).mean(0)).square().sum()
    return total


def embedding_network(settings: DMSettings, channels: int, num_classes: int, image_size: int,
                      seed: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The features (N, width * s^2 for a last block of s x s) of DM's ConvNet (module docstring)
    drawn by ``seed`` on the CPU and moved to ``device``; its classifier unused, weights frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("conv", in_channels=channels, num_classes=num_classes, image_size=image_size,
                          depth=settings.depth, width=settings.width, norm=settings.norm, constant_width=True)
    return net.to(device).requires_grad_(False).features


def dm_step(state: DMState, pools: Sequence[torch.Tensor], settings: DMSettings, generator: torch.Generator,
            ) -> tuple[DMState, float]:
    """One DM iteration: (the next state, L(S) before the step). ``pools[c]``: the real images
    of class c (n_c, ch, H, W); every draw (network seed, batches, augmentations) from ``generator``."""
    images = state.images
    k, (channels, size) = len(pools), (images.shape[1], images.shape[2])
    ipc = len(images) // k
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
    embed = embedding_network(settings, channels, k, size, seed, images.device)
    support = images.detach().requires_grad_(True)
    real, synthetic = [], []
    for c, pool in enumerate(pools):
        rows = torch.randperm(len(pool), generator=generator)[:settings.real_batch].to(pool.device)
        r, s = augment_alike([pool[rows], support[c * ipc:(c + 1) * ipc]], settings.augmentations, generator)
        real.append(r)
        synthetic.append(s)
    loss = matching_loss(embed, real, synthetic)
    (grad,) = torch.autograd.grad(loss, support)
    velocity = settings.momentum * state.velocity + grad
    return DMState(images - settings.lr * velocity, velocity, state.iteration + 1), float(loss.detach())


def distribution_matching(prepared, images: torch.Tensor, labels: torch.Tensor, seed: int,
                          settings: DMSettings = DMSettings(), *, max_minutes: float | None = None,
                          began: float | None = None, progress: bool = False,
                          device: torch.device = torch.device("cpu"), start: DMProgress | None = None,
                          keep: Callable[[DMProgress], None] | None = None, keep_every: float | None = None,
                          stop: Callable[[], bool] | None = None) -> DMResult:
    """DM's synthetic set grown from ``images`` (C * ipc, ch, H, W), class-ordered, with hard
    ``labels`` (C * ipc, C), on the training images of ``prepared`` (a rcig.data.Prepared).

    Runs ``settings.iterations`` steps, or fewer under a wall-clock budget of ``max_minutes``
    counted from ``began`` (a ``time.perf_counter()``; None: this call's start): no step starts
    that would end past it, at the mean step time so far (:func:`rcig.timing.past_budget`);
    at least one runs. Seeded: every draw comes from one generator of ``seed``.

    ``start``: go on from a run's :class:`DMProgress` (``images`` then only give the shapes),
    its seconds counted against the budget; the result is the uninterrupted run's. ``keep``
    receives the progress after a step at most every ``keep_every`` wall seconds (None:
    ``KEEP_EVERY``; 0: after every step), for the caller to store. ``stop``, asked after each
    step: when it says True, the progress goes to ``keep`` at once and the run ends there, its
    result marked ``stopped``.
    """
    from rcig.data.sampling import class_members
    from rcig.progress import Progress
    from rcig.timing import past_budget

    began = time.perf_counter() if began is None else began
    k = prepared.dataset.num_classes
    if len(images) % k or len(images) != len(labels):
        raise ValueError(f"{len(images)} images and {len(labels)} labels are not the same number per class of {k}")
    ipc = len(images) // k
    members = class_members(prepared.y_train, k, ipc, prepared.dataset.class_names)
    pools = [prepared.x_train[m].to(device) for m in members]
    images = images.to(device)
    state = DMState(images, torch.zeros_like(images), 0)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    if start is not None:
        state = DMState(start.state.images.to(device), start.state.velocity.to(device), start.state.iteration)
        generator.set_state(start.generator)
        losses, began = list(start.losses), began - start.seconds  # the budget counts the time already spent
    bar = Progress(settings.iterations, f"rcig dm {prepared.dataset.spec} ipc={ipc}", "iter", enabled=progress,
                   initial=state.iteration, deadline=began + 60 * max_minutes if max_minutes is not None else None)
    loop_started = last_kept = time.perf_counter()
    first = state.iteration
    with bar:
        while state.iteration < settings.iterations:
            state, loss = dm_step(state, pools, settings, generator)
            losses.append(loss)
            bar.update(1, loss=f"{loss:.4g}")
            now = time.perf_counter()
            stopped = stop is not None and stop()
            if keep is not None and (stopped or now - last_kept >= (KEEP_EVERY if keep_every is None else keep_every)):
                keep(DMProgress(state, generator.get_state(), losses, now - began))
                last_kept = now
            if stopped:
                return DMResult(state.images.detach(), labels.to(device), state.iteration, losses, stopped=True)
            if past_budget(max_minutes, began, loop_started, now, state.iteration - first):
                break
    return DMResult(state.images.detach(), labels.to(device), state.iteration, losses)


__all__ = ["DMProgress", "DMResult", "DMSettings", "DMState", "distribution_matching", "dm_step", "embedding_network",
           "matching_loss"]
