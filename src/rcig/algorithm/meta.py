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
    BaseNetwork, HinvQuadratic, InnerLoss, InnerProblem, Network, Solvers, features_and_change, inner_problem,
    ridge_matrix,
)
from rcig.algorithm.optim import Params
from rcig.algorithm.recompute import RowFunction, chunk_slices, in_chunks
from rcig.augment import augment_batch
from rcig.config import AUTO, Config
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


def row_draw(x: Tensor, y: Tensor, k: int | None, augment: Augment | None,
             generator: torch.Generator | None) -> Callable[[], tuple[Tensor, Tensor]]:
    """``() -> (x, y)``: at each call ``k`` random rows (None: all), freshly augmented if
    ``augment`` is set, the draws from ``generator``."""
    def draw() -> tuple[Tensor, Tensor]:
        rows = grad_rows(len(x), k, generator)
        xx, yy = (x, y) if rows is None else (x[rows], y[rows])
        return augmented(xx, augment), yy

    return draw


def rows_with_grad(fn: RowFunction, x: Tensor, params: Params, rows: Tensor | None, chunk: int | None,
                   chunk_rows: int | None = None, keep_graph: bool = False) -> tuple[tuple[Tensor, ...], Tensor]:
    """``(outputs, order)`` of ``fn(x, params) -> tuple of (n, ...) tensors`` where only the
    rows ``rows`` carry gradients to ``x`` (the reference's "subsampling trick" for memory).

    The rows with gradients go through ``fn`` in chunks of ``chunk_rows``, recomputed for the
    backward (:func:`rcig.algorithm.recompute.in_chunks`; None: one graph over all of them).
    The other rows go through ``fn`` in chunks of ``chunk`` with ``x`` detached and, unless
    ``keep_graph``, without any graph at all. Outputs come in the order ``order``
    (``rows`` first, then the rest); without ``rows`` every row has gradients and ``order``
    is the identity.
    """
    n = x.shape[0]
    if rows is None:
        return in_chunks(fn, x, params, chunk_rows), torch.arange(n)
    rest = torch.ones(n, dtype=torch.bool)
    rest[rows] = False
    rest = rest.nonzero().squeeze(1)
    with_grad = in_chunks(fn, x[rows], params, chunk_rows)
    step = chunk or len(rest) or 1
    with torch.enable_grad() if keep_graph else torch.no_grad():
        parts = [fn(x[rest[block]].detach(), params) for block in chunk_slices(len(rest), step)]
    outputs = tuple(torch.cat([g] + [p[j] for p in parts]) for j, g in enumerate(with_grad))
    return outputs, torch.cat([rows, rest])


def partial_features(f: Network, body0: Params, x: Tensor, delta: Params, rows: Tensor | None,
                     settings: GradSettings) -> tuple[Tensor, Tensor, Tensor]:
    """``(phi0, u, order)`` with gradients through the rows ``rows`` only (see :func:`rows_with_grad`)."""
    (phi, u), order = rows_with_grad(lambda xx, d: features_and_change(f, body0, xx, d, settings.linearize), x, delta,
                                     rows, settings.chunk, settings.chunk_rows)
    return phi, u, order


class RowSampledInner:
    """An inner problem whose every gradient and H v uses a fresh draw of the support.

    For supports too large to differentiate whole (the presets' ``inner_train_batch_size``
    and ``hinv_batch_size``) and for augmentation during distillation: at each call ``draw()``
    gives the support's rows for it (:func:`row_draw`: ``k`` random rows, freshly augmented
    where asked) and ``problem_of(x, y)`` the ridge problem of those rows (same network and
    l2), whose gradient or H v is returned, so the solvers see unbiased-in-spirit, cheaper
    (for k rows), noisier estimates. ``body0``: the base body, where the solves start.
    """

    def __init__(self, body0: Params, problem_of: Callable[[Tensor, Tensor], InnerProblem],
                 draw: Callable[[], tuple[Tensor, Tensor]]):
        self.body0 = {k: v.detach() for k, v in body0.items()}
        self.problem_of, self.draw = problem_of, draw

    def _subset(self) -> InnerProblem:
        return self.problem_of(*self.draw())

    def loss_and_grad(self, delta: Params) -> tuple[float, Params]:
        return self._subset().loss_and_grad(delta)

    def loss_and_grad_at_zero(self) -> tuple[float, Params]:
        return self._subset().loss_and_grad_at_zero()

    def hvp(self, delta: Params, v: Params) -> Params:
        return self._subset().hvp(delta, v)


# -------------------------------------------------------------------- the two gradients

class Batch(NamedTuple):
    """Real target images and their labels (class indices (m,), or centred one-hot rows (m, C))."""

    x: Tensor
    y: Tensor


class GradSettings(NamedTuple):
    """What the direct and implicit gradients need of the config."""

    l2: float  # the ridge strength, :func:`l2_strength`
    flip: bool
    linearize: bool
    learn_labels: bool
    chunk: int | None = None  # rows per forward of the rows without gradients, :func:`forward_rows` (None: all at once)
    chunk_rows: int | None = None  # rows per recomputed chunk of the rows with gradients (None: one graph)


class DirectRows(NamedTuple):
    """The rows the direct gradient backpropagates through (None: all)."""

    support: Tensor | None = None
    target: Tensor | None = None


def direct_gradient(base: BaseNetwork, support: dict[str, Tensor], delta: Params, target: Batch,
                    settings: GradSettings, rows: DirectRows = DirectRows(),
                    augment: Augment | None = None) -> DirectResult:
    """:class:`DirectResult` (loss, acc, direct grads per leaf, g_t = dL_out/d delta), delta held at delta*.

    ``rows``: backpropagate through these support / target rows only (large sets).
    ``augment``: the support rows (flip copies included) go through it, inside the graph.
    """
    f, body0 = base
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(settings.learn_labels)
        log_temp = support["log_temp"].detach().requires_grad_()
        d = {k: v.detach().requires_grad_() for k, v in delta.items()}
        x_s, y_s = augmented_rows(*expand_support(x, y, settings.flip), augment)
        phi_s, u_s, order_s = partial_features(f, body0, x_s, d, rows.support, settings)
        phi_t, u_t, order_t = partial_features(f, body0, target.x, d, rows.target, settings)
        y_s, y_t = y_s[order_s], target.y[order_t]
        pred = inner_prediction(phi_s, u_s, y_s, phi_t, u_t, settings.l2)
        loss = outer_loss(pred, y_t, log_temp, y_s)
        wrt = [x, log_temp, *d.values()] + ([y] if settings.learn_labels else [])
        grads = torch.autograd.grad(loss, wrt)
    direct = {"x": grads[0], "log_temp": grads[1],
              "y": grads[-1] if settings.learn_labels else torch.zeros_like(y)}
    g_t = dict(zip(d, grads[2:2 + len(d)]))
    labels = y_t if y_t.dim() == 1 else y_t.argmax(1)
    acc = float((pred.argmax(1) == labels).float().mean())
    return DirectResult(loss.item(), acc, direct, g_t)


def implicit_gradient(base: BaseNetwork, support: dict[str, Tensor], delta: Params, v: Params,
                      settings: GradSettings, rows: Tensor | None = None,
                      augment: Augment | None = None) -> dict[str, Tensor]:
    """``- d/dS [ v . grad_delta L_in(delta*, S) ]`` per leaf (log_temp's is zero).

    ``rows``: differentiate through these support rows only (``implicit_batch_size``).
    ``augment``: the support rows (flip copies included) go through it, inside the graph.
    """
    learn_labels = settings.learn_labels
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(learn_labels)
        x_s, y_s = augmented_rows(*expand_support(x, y, settings.flip), augment)
        v_dot_grad = (linearized_v_dot_grad if settings.linearize else nonlinear_v_dot_grad)(
            base, x_s, y_s, delta, v, settings, rows)
        wrt = [x] + ([y] if learn_labels else [])
        grads = torch.autograd.grad(v_dot_grad, wrt)
    return {"x": -grads[0], "y": -grads[1] if learn_labels else torch.zeros_like(y),
            "log_temp": torch.zeros_like(support["log_temp"])}


def linearized_v_dot_grad(base: BaseNetwork, x_s: Tensor, y_s: Tensor, delta: Params, v: Params,
                          settings: GradSettings, rows: Tensor | None) -> Tensor:
    """``v . grad L_in`` up to a term constant in the support: ``-c <J v, A^-1 (Y - J delta)>``
    (the ``c <v, delta>`` term drops out); two JVPs of the support, differentiable in x."""
    f, body0 = base
    n, c = y_s.shape

    def parts(xx: Tensor, _: Params) -> tuple[Tensor, Tensor, Tensor]:
        phi, j_delta = features_and_change(f, body0, xx, delta, True)
        return phi, j_delta, features_and_change(f, body0, xx, v, True)[1]

    (phi_s, j_delta, j_v), order = rows_with_grad(parts, x_s, {}, rows, settings.chunk, settings.chunk_rows)
    a_inv_r = torch.linalg.solve(ridge_matrix(phi_s, settings.l2), y_s[order] - j_delta)
    return -(settings.l2 / (n * c)) * (j_v * a_inv_r).sum()


def nonlinear_v_dot_grad(base: BaseNetwork, x_s: Tensor, y_s: Tensor, delta: Params, v: Params,
                         settings: GradSettings, rows: Tensor | None) -> Tensor:
    """``v . grad L_in(delta*)`` of the non-linearised model, by double backward; the rows
    outside ``rows`` keep their graph to delta (x detached): the gradient needs every row."""
    f, body0 = base
    n, c = y_s.shape
    d = {k: t.detach().requires_grad_() for k, t in delta.items()}
    (phi_s, u_s), order = rows_with_grad(lambda xx, dd: features_and_change(f, body0, xx, dd, False),
                                         x_s, d, rows, settings.chunk, keep_graph=True)
    r = y_s[order] - u_s
    l_in = 0.5 * (settings.l2 / (n * c)) * ((r * torch.linalg.solve(ridge_matrix(phi_s, settings.l2), r)).sum()
                                           + sum((t * t).sum() for t in d.values()))
    g = torch.autograd.grad(l_in, list(d.values()), create_graph=True)
    return sum((gi * v[k]).sum() for gi, k in zip(g, d))


def clip_to(implicit: dict[str, Tensor], direct: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scale each implicit leaf so that ||implicit|| <= ||direct|| (NaN-safe, as the reference)."""
    out = {}
    for k, g in implicit.items():
        g_norm, d_norm = g.norm(), direct[k].norm()
        out[k] = torch.nan_to_num(g / g_norm * torch.minimum(g_norm, d_norm))
    return out


# ---------------------------------------------------------------------------- one pass

class RowSubsets(NamedTuple):
    """How many rows carry gradients in each part of a pass (None: all), drawn from ``generator``."""

    direct_support: int | None
    direct_target: int | None
    implicit: int | None
    generator: torch.Generator | None


class Pass(NamedTuple):
    """What the parts of one meta-gradient pass run on (:func:`new_pass`, :func:`plain_pass`)."""

    base: BaseNetwork
    support: dict[str, Tensor]
    n_rows: int  # the rows the inner model sees (flip and augmented copies included)
    inner: InnerProblem  # the inner solve's
    hinv: InnerProblem  # the H^-1 g solve's
    settings: GradSettings
    subsets: RowSubsets
    augment: Augment | None  # the support rows of the direct and implicit gradients, in the graph


def resolved_chunk_rows(cfg: Config) -> int | None:
    """``cfg.chunk_rows`` as a step takes it: rows per recomputed chunk, or None (one graph).
    "auto" is chosen from the memory available (:func:`rcig.algorithm.memory.choose_chunk_rows`),
    which a run resolves before its first step (``rcig distill``, :func:`rcig.distill`); a
    step given it unresolved knows no memory and takes one graph, as the choice does then."""
    return None if cfg.chunk_rows == AUTO else cfg.chunk_rows


def forward_rows(cfg: Config) -> int | None:
    """Rows per forward without a graph (the rows that carry no gradient): at most
    ``cfg.max_forward_batch_size`` and, when the step runs in chunks, at most its chunk size,
    so that its peak memory is set by the chunk there too (the same values in more pieces;
    None: all at once)."""
    return min((k for k in (cfg.max_forward_batch_size, resolved_chunk_rows(cfg)) if k is not None), default=None)


def grad_settings(cfg: Config, n_images: int) -> GradSettings:
    """The :class:`GradSettings` of ``cfg`` for a support of ``n_images`` images."""
    return GradSettings(l2_strength(cfg, n_images), cfg.flip, cfg.linearize, cfg.learn_labels,
                        forward_rows(cfg), resolved_chunk_rows(cfg))


def plain_pass(base: BaseNetwork, support: dict[str, Tensor], cfg: Config) -> Pass:
    """A pass on the whole plain support: one inner problem for both solves, no augmentation,
    every row with gradients (the learning-rate tuning's)."""
    settings = grad_settings(cfg, support["x"].shape[0])
    x_s, y_s = expand_support(support["x"].detach(), support["y"].detach(), cfg.flip)
    problem = inner_problem(*base, x_s, y_s, settings.l2, cfg.linearize, chunk_rows=settings.chunk_rows)
    return Pass(base, support, len(x_s), problem, problem, settings, RowSubsets(None, None, None, None), None)


def new_pass(base: BaseNetwork, support: dict[str, Tensor], cfg: Config, generator: torch.Generator | None,
             augmented_pass: bool) -> Pass:
    """A step's pass: its augmentation (:func:`pass_augmentation`, drawn now) and its inner
    problems, row-sampled and/or freshly augmented at every solver step where the config says."""
    settings = grad_settings(cfg, support["x"].shape[0])
    augment = pass_augmentation(cfg, generator, augmented_pass)
    x_s, y_s = augmented_rows(*expand_support(support["x"].detach(), support["y"].detach(), cfg.flip), augment.rows)

    def problem_of(x: Tensor, y: Tensor, one_shot: bool = False) -> InnerProblem:
        return inner_problem(*base, x, y, settings.l2, cfg.linearize, one_shot=one_shot,
                             chunk_rows=settings.chunk_rows)

    whole = None if cfg.inner_train_batch_size and cfg.hinv_batch_size else problem_of(x_s, y_s)

    def problem(k: int | None, fresh: Augment | None) -> InnerProblem:
        if (k is not None and k < len(x_s)) or fresh is not None:
            return RowSampledInner(base.body0, lambda x, y: problem_of(x, y, one_shot=True),
                                   row_draw(x_s, y_s, k, fresh, generator))
        return whole if whole is not None else problem_of(x_s, y_s)

    subsets = RowSubsets(*cfg.direct_batch_sizes, cfg.implicit_batch_size, generator)
    return Pass(base, support, len(x_s), problem(cfg.inner_train_batch_size, augment.inner),
                problem(cfg.hinv_batch_size, None), settings, subsets, augment.outer)


def pass_direct(p: Pass, delta: Params, target: Batch, split: BatchSplit = SOLO) -> DirectResult:
    """The pass's direct gradient and g_t at delta*: this process's share of the target batch,
    summed over the processes by ``split`` (one process: the whole batch)."""
    rows = DirectRows(grad_rows(p.n_rows, p.subsets.direct_support, p.subsets.generator),
                      grad_rows(len(target.x), p.subsets.direct_target, p.subsets.generator))  # the whole batch's
    part = split.share(len(target.x))
    rows = rows._replace(target=rows_in_share(rows.target, part))
    direct = direct_gradient(p.base, p.support, delta, Batch(target.x[part], target.y[part]), p.settings, rows,
                             p.augment)
    return reduce_direct(direct, len(target.x[part]) / len(target.x), split)


def pass_implicit(p: Pass, delta: Params, v: Params) -> dict[str, Tensor]:
    """The pass's implicit gradient at delta* and v ~= H^-1 g_t."""
    rows = grad_rows(p.n_rows, p.subsets.implicit, p.subsets.generator)
    return implicit_gradient(p.base, p.support, delta, v, p.settings, rows, p.augment)


def reduce_direct(direct: DirectResult, weight: float, split: BatchSplit) -> DirectResult:
    """``sum_r weight_r direct_r`` over the processes (weight = share / batch) of the loss,
    accuracy, direct gradients and g_t, as one list of tensors."""
    keys = list(direct.g_t)
    scalars = torch.tensor([direct.loss, direct.acc], device=direct.grads["x"].device)
    parts = split.reduce([scalars] + [direct.grads[k] for k in LEAVES] + [direct.g_t[k] for k in keys], weight)
    return DirectResult(float(parts[0][0]), float(parts[0][1]), dict(zip(LEAVES, parts[1:4])),
                        dict(zip(keys, parts[4:])))


def meta_gradient(base: BaseNetwork, support: dict[str, Tensor], target: Batch, cfg: Config, solvers: Solvers,
                  generator: torch.Generator | None = None, augmented_pass: bool = False,
                  split: BatchSplit = SOLO) -> MetaResult:
    """The RCIG meta-gradient of one pass: one base network, one target batch.

    ``support``: dict with ``x`` (n, ch, H, W), ``y`` (n, C), ``log_temp`` () tensors.
    ``generator`` draws the support/target rows when the config subsamples them for large
    supports (``direct_batch_sizes``, ``inner_train_batch_size``, ``hinv_batch_size``,
    ``implicit_batch_size``) and the augmentations (``cfg.aug``); with none of them set it
    is not used. ``augmented_pass``: an ``aug_repeats`` pass (module docstring).
    ``split``: how the processes share the target batch (:class:`BatchSplit`); everything
    but the direct gradient runs identically on every process.
    """
    clock = Stopwatch()
    p = new_pass(base, support, cfg, generator, augmented_pass)
    delta, inner_losses = solvers.inner.solve(InnerLoss(p.inner))  # 1. delta*
    clock.lap("inner_solve")
    direct = pass_direct(p, delta, target, split)  # 2. direct gradient and g_t
    clock.lap("direct")
    v, residuals = solvers.hinv.solve(HinvQuadratic(p.hinv, delta, direct.g_t))  # 3. v ~= H^-1 g_t
    clock.lap("hinv")
    implicit = clip_to(pass_implicit(p, delta, v), direct.grads)  # 4. implicit gradient, 5. clipped
    clock.lap("implicit")
    grads = {k: direct.grads[k] + implicit[k] for k in LEAVES}
    return MetaResult(grads, direct.grads, implicit, direct.loss, direct.acc, inner_losses, residuals, delta,
                      clock.laps)


__all__ = ["LEAVES", "SOLO", "Augment", "Batch", "BatchSplit", "DirectResult", "DirectRows", "GradSettings",
           "MetaResult", "Pass", "PassAugmentation", "RowSampledInner", "RowSubsets", "augmented", "augmented_rows",
           "clip_to", "direct_gradient", "expand_support", "forward_rows", "held_augmentation", "implicit_gradient",
           "inner_prediction", "l2_strength", "label_margin", "meta_gradient", "new_pass", "outer_loss",
           "pass_augmentation", "pass_direct", "pass_implicit", "plain_pass", "resolved_chunk_rows", "row_draw",
           "rows_in_share", "support_augmentation", "support_row_count"]
