r"""One RCIG meta-gradient: inner solve, outer loss, direct + implicit gradient.

Given a base network theta0 = (body0, W0), the learned support S = (x, y, log_temp) and a
batch of real targets (X_t, Y_t):

1. ``delta*``: Adam on the inner loss from 0 (:func:`rcig.algorithm.inner.solve_inner`).
2. ``L_out = CE(softmax(pred(X_t) e^{log_temp}), Y_t) - margin(y)`` with delta* held fixed;
   one backward gives the *direct* gradient dL_out/dS and ``g_t = dL_out/d delta``.
3. ``v ~= H^-1 g_t`` (:func:`rcig.algorithm.inner.solve_hinv`).
4. *implicit* = ``- d/dS [ v . grad_delta L_in(delta*, S) ]`` (v fixed). For the linearised
   model ``v . grad L_in = c(-<J_s v, A^-1 (Y_s - J_s delta*)> + <v, delta*>)``, so this needs
   two JVPs of the support and first derivatives only.
5. Per leaf, the implicit gradient is scaled down to at most the direct gradient's norm;
   the meta-gradient is their sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from rcig.algorithm.inner import (
    Params, features_and_change, make_inner, ridge_matrix, solve_hinv, solve_inner,
)

LEAVES = ("x", "y", "log_temp")


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
    v: Params
    seconds: dict[str, float]  # inner_solve, direct (target forward/backward), hinv, implicit


# ------------------------------------------------------------------ the support and losses

def expand_support(x: Tensor, y: Tensor, flip: bool) -> tuple[Tensor, Tensor]:
    """The rows the inner model sees: ``[x, flip_lr(x)]`` with ``[y, y]`` under the flip trick."""
    if not flip:
        return x, y
    return torch.cat([x, x.flip(-1)]), torch.cat([y, y])


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


def l2_strength(cfg, n_unique_rows: int) -> float:
    """l2 = l2_rate * (C * ipc), the reference's scaling (flip copies not counted)."""
    return cfg.l2_rate * n_unique_rows


# ------------------------------------------------------------- large supports and targets

def grad_rows(n: int, k: int | None, generator: torch.Generator | None) -> torch.Tensor | None:
    """A random subset of ``k`` of ``n`` rows to backpropagate through (None: all rows)."""
    if k is None or k >= n:
        return None
    return torch.randperm(n, generator=generator)[:k]


def partial_features(f, body0: Params, x: Tensor, delta: Params, linearize: bool, rows: Tensor | None,
                     chunk: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """``(phi0, u, order)``: rows ``order[:k]`` carry gradients, the rest come from forwards
    without a graph in chunks of ``chunk`` (the reference's "subsampling trick" for memory).
    Without ``rows``, every row has gradients and ``order`` is the identity."""
    n = x.shape[0]
    if rows is None:
        phi, u = features_and_change(f, body0, x, delta, linearize)
        return phi, u, torch.arange(n)
    rest = torch.ones(n, dtype=torch.bool)
    rest[rows] = False
    rest = rest.nonzero().squeeze(1)
    phi_g, u_g = features_and_change(f, body0, x[rows], delta, linearize)
    with torch.no_grad():
        step = chunk or len(rest) or 1
        parts = [features_and_change(f, body0, x[rest[i:i + step]].detach(), {k: v.detach() for k, v in delta.items()},
                                     linearize) for i in range(0, len(rest), step)]
    phi = torch.cat([phi_g] + [p[0] for p in parts])
    u = torch.cat([u_g] + [p[1] for p in parts])
    return phi, u, torch.cat([rows, rest])


# -------------------------------------------------------------------- the two gradients

def direct_gradient(f, body0: Params, support: dict[str, Tensor], delta: Params, x_t: Tensor, y_t: Tensor,
                    *, l2: float, flip: bool, linearize: bool, learn_labels: bool,
                    support_rows: Tensor | None = None, target_rows: Tensor | None = None,
                    chunk: int | None = None):
    """(loss, acc, direct grads per leaf, g_t = dL_out/d delta), delta held at delta*.

    ``support_rows`` / ``target_rows``: backpropagate through these rows only (large sets).
    """
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(learn_labels)
        log_temp = support["log_temp"].detach().requires_grad_()
        d = {k: v.detach().requires_grad_() for k, v in delta.items()}
        x_s, y_s = expand_support(x, y, flip)
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
    return loss.item(), acc, direct, g_t


def implicit_gradient(f, body0: Params, support: dict[str, Tensor], delta: Params, v: Params,
                      *, l2: float, flip: bool, linearize: bool, learn_labels: bool) -> dict[str, Tensor]:
    """``- d/dS [ v . grad_delta L_in(delta*, S) ]`` per leaf (log_temp's is zero)."""
    with torch.enable_grad():
        x = support["x"].detach().requires_grad_()
        y = support["y"].detach().requires_grad_(learn_labels)
        x_s, y_s = expand_support(x, y, flip)
        n, c = y_s.shape
        scale = l2 / (n * c)
        if linearize:
            # v . grad L_in = c(-<J v, A^-1 (Y - J delta)> + <v, delta>); the last term is
            # constant in S. Two JVPs of the support, differentiable in x.
            phi_s, j_delta = features_and_change(f, body0, x_s, delta, True)
            _, j_v = features_and_change(f, body0, x_s, v, True)
            a_inv_r = torch.linalg.solve(ridge_matrix(phi_s, l2), y_s - j_delta)
            v_dot_grad = -scale * (j_v * a_inv_r).sum()
        else:
            d = {k: t.detach().requires_grad_() for k, t in delta.items()}
            phi_s, u_s = features_and_change(f, body0, x_s, d, False)
            r = y_s - u_s
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

def meta_gradient(f, body0: Params, support: dict[str, Tensor], x_t: Tensor, y_t: Tensor, cfg,
                  inner_lr: float, hvp_lr: float, generator: torch.Generator | None = None) -> MetaResult:
    """The full RCIG meta-gradient for one base network and one target batch.

    ``f``: :func:`rcig.algorithm.inner.network` of the base network; ``support``: dict with
    ``x`` (n, ch, H, W), ``y`` (n, C), ``log_temp`` () tensors; ``cfg``: a :class:`rcig.config.Config`.
    ``generator`` draws the rows that carry gradients when ``cfg.direct_batch_sizes`` subsamples.
    """
    options = dict(flip=cfg.flip, linearize=cfg.linearize, learn_labels=cfg.learn_labels)
    l2 = l2_strength(cfg, support["x"].shape[0])
    clock = Stopwatch()
    x_s, y_s = expand_support(support["x"].detach(), support["y"].detach(), cfg.flip)
    problem = make_inner(f, body0, x_s, y_s, l2, cfg.linearize)
    delta, inner_losses = solve_inner(problem, inner_lr, cfg.n_inner_steps)
    clock.lap("inner_solve")
    support_k, target_k = cfg.direct_batch_sizes
    rows = dict(support_rows=grad_rows(len(x_s), support_k, generator),
                target_rows=grad_rows(len(x_t), target_k, generator), chunk=cfg.max_forward_batch_size)
    loss, acc, direct, g_t = direct_gradient(f, body0, support, delta, x_t, y_t, l2=l2, **options, **rows)
    clock.lap("direct")
    v, residuals = solve_hinv(problem, delta, g_t, hvp_lr, cfg.n_hinv_steps)
    clock.lap("hinv")
    implicit = clip_to(implicit_gradient(f, body0, support, delta, v, l2=l2, **options), direct)
    clock.lap("implicit")
    grads = {k: direct[k] + implicit[k] for k in LEAVES}
    return MetaResult(grads, direct, implicit, loss, acc, inner_losses, residuals, delta, v, clock.laps)


class Stopwatch:
    """Named laps in seconds, for the per-part timings in the log and the benchmarks."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


__all__ = ["LEAVES", "MetaResult", "clip_to", "direct_gradient", "expand_support", "implicit_gradient",
           "inner_prediction", "l2_strength", "label_margin", "meta_gradient", "outer_loss"]
