r"""One RCIG meta-gradient: inner solve, outer loss, direct + implicit gradient.

Given a base network theta0 = (body0, W0), the learned support S = (x, y, log_temp) and a
batch of real targets (X_t, Y_t):

1. ``delta*``: Adam (or CG, ``cfg.solver``) on the inner loss from 0 (:mod:`rcig.algorithm.inner`).
2. ``L_out = CE(softmax(pred(X_t) e^{log_temp}), Y_t) - margin(y)`` with delta* held fixed;
   one backward gives the *direct* gradient dL_out/dS and ``g_t = dL_out/d delta``.
3. ``v ~= H^-1 g_t`` by the same solver.
4. *implicit* = ``- d/dS [ v . grad_delta L_in(delta*, S) ]`` (v fixed). For the linearised
   model ``v . grad L_in = c(-<J_s v, A^-1 (Y_s - J_s delta*)> + <v, delta*>)``, so this needs
   two JVPs of the support and first derivatives only.
5. Per leaf, the implicit gradient is scaled down to at most the direct gradient's norm;
   the meta-gradient is their sum.

With ``cfg.aug`` set (augmentation during distillation, the reference's option), every
step of the inner solve sees the support with a fresh random transform per row, and an
*augmented* pass (``augmented_pass=True``) takes steps 2 and 4 on a fresh augmentation each,
differentiably, so the gradients reach the images through the transforms. The H^-1 g
solve stays on the plain support, as in the reference. With ``cfg.aug_per_pass`` instead,
an augmented pass draws one transform per row and holds it (:func:`held_augmentation`)
through all four parts, so it solves one fixed convex problem of the transformed support
(CG can solve it, and the implicit gradient is that problem's), and a plain pass is plain
throughout; ``cfg.aug_copies`` = K makes that support K transformed copies of each row
(labels repeated), closer to the many transformed views a network trained with
augmentation sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rcig.algorithm.inner import (
    SOLVERS, InnerProblem, Network, Params, features_and_change, make_inner, ridge_matrix,
)
from rcig.augment import augment_batch
from rcig.config import Config
from rcig.timing import Stopwatch

LEAVES = ("x", "y", "log_temp")
Augment = Callable[[Tensor], Tensor]  # support rows (n, ch, H, W) -> the same rows transformed


class BatchSplit(NamedTuple):
    """How the processes of a run share each target batch; the run driver builds it.

    Every process gets the whole batch, takes the rows ``share(n)`` of it for the direct
    gradient, and ``reduce`` sums ``weight * tensors`` over the processes (weight = share
    size / batch size). :data:`SOLO` is one process: the whole batch, nothing to sum.
    """

    share: Callable[[int], slice]  # n -> this process's contiguous rows of a batch of n
    reduce: Callable[[list[Tensor], float], list[Tensor]]  # (tensors, weight) -> sum over the processes


SOLO = BatchSplit(share=lambda n: slice(0, n), reduce=lambda tensors, weight: tensors)


def rows_in_share(rows: Tensor | None, part: slice) -> Tensor | None:
    """The entries of ``rows`` (indices into a whole batch) that fall in ``part``, as indices
    into the share; None (every row) stays None."""
    if rows is None:
        return None
    return rows[(rows >= part.start) & (rows < part.stop)] - part.start


@dataclass
class MetaResult:
    grads: dict[str, Tensor]  # direct + clipped implicit, per leaf of the support
    direct: dict[str, Tensor]
    implicit: dict[str, Tensor]  # after clipping
    outer_loss: float
    outer_acc: float
    inner_losses: list[float]  # L_in before each inner Adam step
    residuals: list[float]  # v^T(Hv - 2 g) before each H^-1 g Adam step
    delta: Params
    seconds: dict[str, float]  # inner_solve, direct (target forward/backward), hinv, implicit


class DirectResult(NamedTuple):
    """The outer loss at delta* and its gradients (:func:`direct_gradient`)."""

    loss: float
    acc: float  # the inner prediction's accuracy on the target batch
    grads: dict[str, Tensor]  # dL_out/dS per leaf of the support, delta held fixed
    g_t: Params  # dL_out/d delta, the right-hand side of the H^-1 g solve


# ------------------------------------------------------------------ the support and losses

def expand_support(x: Tensor, y: Tensor, flip: bool) -> tuple[Tensor, Tensor]:
    """The rows the inner model sees: ``[x, flip_lr(x)]`` with ``[y, y]`` under the flip trick."""
    if not flip:
        return x, y
    return torch.cat([x, x.flip(-1)]), torch.cat([y, y])


def support_row_count(n_images: int, flip: bool) -> int:
    """How many rows ``expand_support`` makes of ``n_images`` support images."""
    return n_images * (2 if flip else 1)


def support_augmentation(names: tuple[str, ...], generator: torch.Generator | None) -> Augment | None:
    """``x -> x`` with one random transform per row drawn from ``names`` (differentiable in x,
    seeded by ``generator``, fresh at every call), or None when ``names`` is empty."""
    if not names:
        return None
    return lambda x: augment_batch(x, names, generator)


def held_augmentation(names: tuple[str, ...], generator: torch.Generator, copies: int = 1) -> Augment:
    """Like :func:`support_augmentation`, but every call applies the *same* transforms: the
    draw is one seed taken from ``generator`` now, replayed at each call (same row count).
    ``copies``: the rows are tiled that many times first ((n, ...) -> (copies n, ...)), each
    copy with its own transform; :func:`augmented_rows` tiles the labels to match."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return lambda x: augment_batch(x.repeat(copies, *[1] * (x.dim() - 1)), names, torch.Generator().manual_seed(seed))


class PassAugmentation(NamedTuple):
    """What one meta-gradient pass augments (None: nothing), :func:`pass_augmentation`."""

    rows: Augment | None  # once, on the inner problem's rows (a held draw: a fixed problem)
    inner: Augment | None  # at every inner-solve step, a fresh draw each
    outer: Augment | None  # the support rows of the direct and implicit gradients, in the graph


def pass_augmentation(cfg: Config, generator: torch.Generator | None, augmented_pass: bool) -> PassAugmentation:
    """The two modes of augmentation during distillation (module docstring). The reference's:
    a fresh draw at every inner step and, on an augmented pass, in the direct and implicit
    gradients (H^-1 g stays plain). ``cfg.aug_per_pass``: one draw held through all four parts
    of an augmented pass, nothing on a plain one. Without ``cfg.aug``: nothing."""
    if cfg.aug_per_pass:
        held = held_augmentation(cfg.aug, generator, cfg.aug_copies) if augmented_pass else None
        return PassAugmentation(rows=held, inner=None, outer=held)
    fresh = support_augmentation(cfg.aug, generator)
    return PassAugmentation(rows=None, inner=fresh, outer=fresh if augmented_pass else None)


def augmented(x: Tensor, augment: Augment | None) -> Tensor:
    """``augment(x)``, or x itself without augmentation."""
    return x if augment is None else augment(x)


def augmented_rows(x: Tensor, y: Tensor, augment: Augment | None) -> tuple[Tensor, Tensor]:
    """``(augment(x), y)`` with y tiled to the transformed rows (an augmentation may make copies)."""
    x = augmented(x, augment)
    return x, y.repeat(len(x) // len(y), 1)


def label_margin(y: Tensor) -> Tensor:
    """mean_i min(top1(y_i) - top2(y_i), 1/(2C)): keeps each label's top entry on top."""
    top2 = y.topk(2, dim=1).values
    return torch.clamp(top2[:, 0] - top2[:, 1], max=1.0 / (2 * y.shape[1])).mean()


def outer_loss(pred: Tensor, y_t: Tensor, log_temp: Tensor, y_s: Tensor) -> Tensor:
    """Tempered cross-entropy of the inner prediction on real targets, minus the margin term.

    ``y_t`` may be class indices (m,) or centred one-hot rows (m, C).
    """
    target = y_t if y_t.dim() == 1 else y_t.argmax(1)
    return F.cross_entropy(pred * log_temp.exp(), target) - label_margin(y_s)


def inner_prediction(phi_s: Tensor, u_s: Tensor, y_s: Tensor, phi_t: Tensor, u_t: Tensor, l2: float) -> Tensor:
    """``pred(X_t) = u_t + phi_t phi_s^T (K_ss + l2 I)^-1 (y_s - u_s)`` (m, C)."""
    alpha = torch.linalg.solve(ridge_matrix(phi_s, l2), y_s - u_s)
    return u_t + (phi_t @ phi_s.T) @ alpha


def l2_strength(cfg: Config, n_unique_rows: int) -> float:
    """l2 = l2_rate * (C * ipc), the reference's scaling (flip copies not counted)."""
    return cfg.l2_rate * n_unique_rows


# ------------------------------------------------------------- large supports and targets

def grad_rows(n: int, k: int | None, generator: torch.Generator | None) -> torch.Tensor | None:
    """A random subset of ``k`` of ``n`` rows to backpropagate through (None: all rows)."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=generator)[:k]


def rows_with_grad(fn, x: Tensor, rows: Tensor | None, chunk: int | None,
                   keep_graph: bool = False) -> tuple[tuple[Tensor, ...], Tensor]:
    """``(outputs, order)`` of ``fn(x) -> tuple of (n, ...) tensors`` where only the rows
    ``rows`` carry gradients to ``x`` (the reference's "subsampling trick" for memory).

    The other rows go through ``fn`` in chunks of ``chunk`` with ``x`` detached and, unless
    ``keep_graph``, without any graph at all. Outputs come in the order ``order``
    (``rows`` first, then the rest); without ``rows`` every row has gradients and ``order``
    is the identity.
    """
    n = x.shape[0]
    if rows is None:
        return tuple(fn(x)), torch.arange(n)
    rest = torch.ones(n, dtype=torch.bool)
    rest[rows] = False
    rest = rest.nonzero().squeeze(1)
    with_grad = fn(x[rows])
    step = chunk or len(rest) or 1
    with torch.enable_grad() if keep_graph else torch.no_grad():
        parts = [fn(x[rest[i:i + step]].detach()) for i in range(0, len(rest), step)]
    outputs = tuple(torch.cat([g] + [p[j] for p in parts]) for j, g in enumerate(with_grad))
    return outputs, torch.cat([rows, rest])


def partial_features(f: Network, body0: Params, x: Tensor, delta: Params, linearize: bool, rows: Tensor | None,
                     chunk: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(phi0, u, order)`` with gradients through the rows ``rows`` only (see :func:`rows_with_grad`)."""
    (phi, u), order = rows_with_grad(lambda xx: features_and_change(f, body0, xx, delta, linearize), x, rows, chunk)
    return phi, u, order


class RowSampledInner:
    """An inner problem whose every gradient and H v uses a fresh draw of the support:
    ``k`` random rows (None: all) and, with ``augment``, a fresh transform of each.

    For supports too large to differentiate whole (the presets' ``inner_train_batch_size``
    and ``hinv_batch_size``) and for augmentation during distillation: each call builds the
    ridge problem of the drawn rows (same l2) and returns its gradient or H v, so the
    solvers see unbiased-in-spirit, cheaper (for k rows), noisier estimates.
    """

    def __init__(self, f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float, linearize: bool,
                 k: int | None, generator: torch.Generator | None, augment: Augment | None = None):
        self.args, self.k, self.generator = (f, body0, x_s, y_s, l2, linearize), k, generator
        self.augment = augment
        self.body0 = {k: v.detach() for k, v in body0.items()}  # the solvers start from zeros like it

    def _subset(self):
        f, body0, x_s, y_s, l2, linearize = self.args
        rows = grad_rows(len(x_s), self.k, self.generator)
        x, y = (x_s, y_s) if rows is None else (x_s[rows], y_s[rows])
        return make_inner(f, body0, augmented(x, self.augment), y, l2, linearize, one_shot=True)

    def loss_and_grad(self, delta: Params) -> tuple[float, Params]:
        return self._subset().loss_and_grad(delta)

    def loss_and_grad_at_zero(self) -> tuple[float, Params]:
        return self._subset().loss_and_grad_at_zero()

    def hvp(self, delta: Params, v: Params) -> Params:
        return self._subset().hvp(delta, v)


def inner_problem(f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float, linearize: bool, k: int | None,
                  generator: torch.Generator | None, full: InnerProblem | None = None,
                  augment: Augment | None = None) -> InnerProblem:
    """The whole-support problem ``full`` (built if None), or a :class:`RowSampledInner` of
    k rows and/or fresh augmentations."""
    if (k is not None and k < len(x_s)) or augment is not None:
        return RowSampledInner(f, body0, x_s, y_s, l2, linearize, k, generator, augment)
    return full if full is not None else make_inner(f, body0, x_s, y_s, l2, linearize)


# -------------------------------------------------------------------- the two gradients

def direct_gradient(f: Network, body0: Params, support: dict[str, Tensor], delta: Params, x_t: Tensor,
                    y_t: Tensor, *, l2: float, flip: bool, linearize: bool, learn_labels: bool,
                    support_rows: Tensor | None = None, target_rows: Tensor | None = None,
                    chunk: int | None = None, augment: Augment | None = None) -> DirectResult:
    """:class:`DirectResult` (loss, acc, direct grads per leaf, g_t = dL_out/d delta), delta held at delta*.

    ``support_rows`` / ``target_rows``: backpropagate through these rows only (large sets).
    ``augment``: the support rows (flip copies included) go through it, inside the graph.
    """
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(learn_labels)
        log_temp = support["log_temp"].detach().requires_grad_()
        d = {k: v.detach().requires_grad_() for k, v in delta.items()}
        x_s, y_s = augmented_rows(*expand_support(x, y, flip), augment)
        phi_s, u_s, order_s = partial_features(f, body0, x_s, d, linearize, support_rows, chunk)
        phi_t, u_t, order_t = partial_features(f, body0, x_t, d, linearize, target_rows, chunk)
        y_s, y_t = y_s[order_s], y_t[order_t]
        pred = inner_prediction(phi_s, u_s, y_s, phi_t, u_t, l2)
        loss = outer_loss(pred, y_t, log_temp, y_s)
        wrt = [x, log_temp, *d.values()] + ([y] if learn_labels else [])
        grads = torch.autograd.grad(loss, wrt)
    direct = {"x": grads[0], "log_temp": grads[1],
              "y": grads[-1] if learn_labels else torch.zeros_like(y)}
    g_t = dict(zip(d, grads[2:2 + len(d)]))
    target = y_t if y_t.dim() == 1 else y_t.argmax(1)
    acc = float((pred.argmax(1) == target).float().mean())
    return DirectResult(loss.item(), acc, direct, g_t)


def implicit_gradient(f: Network, body0: Params, support: dict[str, Tensor], delta: Params, v: Params,
                      *, l2: float, flip: bool, linearize: bool, learn_labels: bool,
                      rows: Tensor | None = None, chunk: int | None = None,
                      augment: Augment | None = None) -> dict[str, Tensor]:
    """``- d/dS [ v . grad_delta L_in(delta*, S) ]`` per leaf (log_temp's is zero).

    ``rows``: differentiate through these support rows only (``implicit_batch_size``).
    ``augment``: the support rows (flip copies included) go through it, inside the graph.
    """
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(learn_labels)
        x_s, y_s = augmented_rows(*expand_support(x, y, flip), augment)
        n, c = y_s.shape
        scale = l2 / (n * c)
        if linearize:
            # v . grad L_in = c(-<J v, A^-1 (Y - J delta)> + <v, delta>); the last term is
            # constant in S. Two JVPs of the support, differentiable in x.
            def parts(xx):
                phi, j_delta = features_and_change(f, body0, xx, delta, True)
                return phi, j_delta, features_and_change(f, body0, xx, v, True)[1]

            (phi_s, j_delta, j_v), order = rows_with_grad(parts, x_s, rows, chunk)
            a_inv_r = torch.linalg.solve(ridge_matrix(phi_s, l2), y_s[order] - j_delta)
            v_dot_grad = -scale * (j_v * a_inv_r).sum()
        else:
            d = {k: t.detach().requires_grad_() for k, t in delta.items()}
            # the other rows keep their graph to delta (x detached): g needs every row
            (phi_s, u_s), order = rows_with_grad(lambda xx: features_and_change(f, body0, xx, d, False),
                                                 x_s, rows, chunk, keep_graph=True)
            r = y_s[order] - u_s
            l_in = 0.5 * scale * ((r * torch.linalg.solve(ridge_matrix(phi_s, l2), r)).sum()
                                  + sum((t * t).sum() for t in d.values()))
            g = torch.autograd.grad(l_in, list(d.values()), create_graph=True)
            v_dot_grad = sum((gi * v[k]).sum() for gi, k in zip(g, d))
        wrt = [x] + ([y] if learn_labels else [])
        grads = torch.autograd.grad(v_dot_grad, wrt)
    return {"x": -grads[0], "y": -grads[1] if learn_labels else torch.zeros_like(y),
            "log_temp": torch.zeros_like(support["log_temp"])}


def clip_to(implicit: dict[str, Tensor], direct: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scale each implicit leaf so that ||implicit|| <= ||direct|| (NaN-safe, as the reference)."""
    out = {}
    for k, g in implicit.items():
        g_norm, d_norm = g.norm(), direct[k].norm()
        out[k] = torch.nan_to_num(g / g_norm * torch.minimum(g_norm, d_norm))
    return out


# ---------------------------------------------------------------------------- one step

def reduce_direct(direct: DirectResult, weight: float, split: BatchSplit) -> DirectResult:
    """``sum_r weight_r direct_r`` over the processes (weight = share / batch) of the loss,
    accuracy, direct gradients and g_t, as one list of tensors."""
    keys = list(direct.g_t)
    scalars = torch.tensor([direct.loss, direct.acc], device=direct.grads["x"].device)
    parts = split.reduce([scalars] + [direct.grads[k] for k in LEAVES] + [direct.g_t[k] for k in keys], weight)
    return DirectResult(float(parts[0][0]), float(parts[0][1]), dict(zip(LEAVES, parts[1:4])),
                        dict(zip(keys, parts[4:])))


def meta_gradient(f: Network, body0: Params, support: dict[str, Tensor], x_t: Tensor, y_t: Tensor, cfg: Config,
                  inner_lr: float, hvp_lr: float, generator: torch.Generator | None = None,
                  augmented_pass: bool = False, base_steps: int = 0,
                  split: BatchSplit = SOLO) -> MetaResult:
    """The full RCIG meta-gradient for one base network and one target batch.

    ``f``: :func:`rcig.algorithm.inner.network` of the base network; ``support``: dict with
    ``x`` (n, ch, H, W), ``y`` (n, C), ``log_temp`` () tensors.
    ``generator`` draws the support/target rows when the config subsamples them for large
    supports (``direct_batch_sizes``, ``inner_train_batch_size``, ``hinv_batch_size``,
    ``implicit_batch_size``) and the augmentations (``cfg.aug``); with none of them set it
    is not used. ``augmented_pass``: an ``aug_repeats`` pass (direct and implicit gradient
    on fresh augmentations, or on one held draw with ``cfg.aug_per_pass``; see the module
    docstring). ``base_steps``: how many
    pool-training steps the base network has done (the inner Adam's starting count, see
    :func:`rcig.algorithm.inner.solve_inner`).

    ``split`` (:class:`BatchSplit`): every process gets the whole target batch and takes its
    share for the direct gradient; the direct gradient, g_t and the outer loss and accuracy
    are then summed over the processes weighted by share size, and the rest runs identically
    on every process.
    """
    options = dict(flip=cfg.flip, linearize=cfg.linearize, learn_labels=cfg.learn_labels)
    solve_inner, solve_hinv = SOLVERS[cfg.solver]
    l2 = l2_strength(cfg, support["x"].shape[0])
    clock = Stopwatch()
    augment = pass_augmentation(cfg, generator, augmented_pass)
    x_s, y_s = augmented_rows(*expand_support(support["x"].detach(), support["y"].detach(), cfg.flip), augment.rows)
    problem_args = (f, body0, x_s, y_s, l2, cfg.linearize)
    full = None if cfg.inner_train_batch_size and cfg.hinv_batch_size else make_inner(*problem_args)
    problem = inner_problem(*problem_args, cfg.inner_train_batch_size, generator, full, augment.inner)
    delta, inner_losses = solve_inner(problem, inner_lr, cfg.n_inner_steps, base_steps)
    clock.lap("inner_solve")
    support_k, target_k = cfg.direct_batch_sizes
    support_rows = grad_rows(len(x_s), support_k, generator)
    target_rows = grad_rows(len(x_t), target_k, generator)  # over the whole batch, on every rank
    part = split.share(len(x_t))
    rows = dict(support_rows=support_rows, target_rows=rows_in_share(target_rows, part),
                chunk=cfg.max_forward_batch_size)
    direct = direct_gradient(f, body0, support, delta, x_t[part], y_t[part], l2=l2, **options, **rows,
                             augment=augment.outer)
    direct = reduce_direct(direct, len(x_t[part]) / len(x_t), split)
    clock.lap("direct")
    problem = inner_problem(*problem_args, cfg.hinv_batch_size, generator, full)
    v, residuals = solve_hinv(problem, delta, direct.g_t, hvp_lr, cfg.n_hinv_steps)
    clock.lap("hinv")
    implicit_rows = grad_rows(len(x_s), cfg.implicit_batch_size, generator)
    implicit = clip_to(implicit_gradient(f, body0, support, delta, v, l2=l2, **options, rows=implicit_rows,
                                         chunk=cfg.max_forward_batch_size, augment=augment.outer), direct.grads)
    clock.lap("implicit")
    grads = {k: direct.grads[k] + implicit[k] for k in LEAVES}
    return MetaResult(grads, direct.grads, implicit, direct.loss, direct.acc, inner_losses, residuals, delta,
                      clock.laps)


__all__ = ["LEAVES", "SOLO", "Augment", "BatchSplit", "DirectResult", "MetaResult", "PassAugmentation", "RowSampledInner", "augmented", "augmented_rows", "clip_to",
           "direct_gradient", "expand_support", "held_augmentation", "implicit_gradient", "inner_prediction",
           "l2_strength", "label_margin", "meta_gradient", "outer_loss", "pass_augmentation", "rows_in_share", "support_augmentation",
           "support_row_count"]
