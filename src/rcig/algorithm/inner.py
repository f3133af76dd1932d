r"""The convexified inner problem of RCIG, its gradient, its Hessian, and the two solvers.

Notation (shapes for a support of n rows, C classes, D features, P body parameters):

* ``theta0``: a pool network's weights, split into the *body* (every conv weight and bias
  plus the final-layer bias; a dict of tensors) and the final-layer weight ``W0`` (C, D),
  which is never a variable: the kernel ridge regression below solves for it.
* ``phi0(x)`` (n, D): penultimate features of the base network.
* ``u(x) = J(x) delta`` (n, C): the linearised change of the logits along a body tangent
  ``delta`` (one forward-mode JVP). With ``linearize=False`` it is instead the real change
  ``f(x; theta0 + delta) - f(x; theta0)``.
* ``K_ss = phi0(X_s) phi0(X_s)^T`` (n, n), ``A = K_ss + l2 I``.

Inner prediction on targets and the inner loss (docs/algorithm.md, "The convexified inner problem")::

    alpha     = A^-1 (Y_s - u(X_s))                                      (n, C)
    pred(X_t) = u(X_t) + phi0(X_t) phi0(X_s)^T alpha                      (m, C)
    L_in      = l2/(2 n C) [ tr(r^T A^-1 r) + ||delta||^2 ],  r = Y_s - u(X_s)

the last line being the collapsed ridge form of
``[0.5 ||Y_s - pred_s||^2 + 0.5 l2 (tr(alpha^T K alpha) + ||delta||^2)] / (n C)``
(because ``Y_s - pred_s = l2 alpha``). For the linearised model, with ``c = l2/(n C)``::

    grad L_in = c (-J^T A^-1 r + delta)          one JVP + one VJP
    H v       = c ( J^T A^-1 J v + v)            one JVP + one VJP, no second derivatives

:class:`LinearizedInner` implements exactly these; :class:`NonlinearInner` (the paper's
non-linearised ablation) gets them from autograd. Both are an :class:`InnerProblem`, the
contract the solvers rely on.

Two solvers (``Config.solver``), each a :class:`Solver` of an :class:`Objective` (the inner
loss, or the H^-1 g quadratic) and each one Hessian-vector product (one JVP + one VJP) per
iteration:

* ``adam`` (the reference): ``n_inner_steps`` Adam steps on L_in from delta = 0 and
  ``n_hinv_steps`` Adam steps on ``0.5 v^T H v - v^T g``, at tuned learning rates.
* ``cg``: conjugate gradients on the same two quadratics, no learning rates. ``H`` is
  ``c I`` plus a matrix of rank at most n C, so CG is exact after n C + 1 iterations and
  usually close long before (linearised model only).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Callable, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.func import functional_call, jvp, linearize, vjp

from rcig.algorithm.optim import Adam, Params, tree_zeros_like
from rcig.algorithm.recompute import chunk_slices, jvp_in_chunks, vjp_in_chunks

if TYPE_CHECKING:
    from rcig.config import Config

# f(body, x) -> (logits (N, C), features (N, D)): a network with its final-layer weight fixed
Network = Callable[[Params, Tensor], tuple[Tensor, Tensor]]
HEAD_WEIGHT = "classifier.weight"


class BaseNetwork(NamedTuple):
    """theta0 as the inner problem sees it: ``f`` with the final-layer weight W0 fixed, and
    the body parameters ``body0`` around which delta moves."""

    f: Network
    body0: Params


class InnerProblem(Protocol):
    """What the solves need of an inner problem (all in the body tangent ``delta``), through
    the objectives :class:`InnerLoss` and :class:`HinvQuadratic`."""

    body0: Params  # the base body; solves start from zeros shaped like it

    def loss_and_grad(self, delta: Params) -> tuple[float, Params]:
        """``L_in(delta)`` and ``grad L_in(delta)``."""

    def loss_and_grad_at_zero(self) -> tuple[float, Params]:
        """``L_in(0)`` and ``grad L_in(0)``, where the solvers start."""

    def hvp(self, delta: Params, v: Params) -> Params:
        """``H(delta) v``, the Hessian of L_in at delta times v."""


class SolveResult(NamedTuple):
    """A solver's answer and the value it recorded before each step or iteration."""

    x: Params  # delta* (inner solve) or v ~= H^-1 g
    values: list[float]


# ---------------------------------------------------------------------- small tree helpers

def tree_dot(a: Params, b: Params) -> Tensor:
    """sum_k <a_k, b_k> over two dicts with the same keys."""
    return sum((a[k] * b[k]).sum() for k in a)


def tree_norm(a: Params) -> Tensor:
    return torch.sqrt(tree_dot(a, a))


def split_params(params: Params) -> tuple[Params, Tensor]:
    """Split a network's parameters into (body, final-layer weight)."""
    body = {k: v for k, v in params.items() if k != HEAD_WEIGHT}
    return body, params[HEAD_WEIGHT]


def network(model: torch.nn.Module, head_weight: Tensor) -> Network:
    """``f(body, x) -> (logits (N, C), features (N, D))`` with the final-layer weight fixed."""

    def f(body: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        return functional_call(model, {**body, HEAD_WEIGHT: head_weight}, (x,), {"return_features": True})

    return f


def base_network(model: torch.nn.Module, params: Params) -> BaseNetwork:
    """The :class:`BaseNetwork` of ``model`` (a template) at the parameters ``params`` (detached)."""
    body0, head0 = split_params({k: v.detach() for k, v in params.items()})
    return BaseNetwork(network(model, head0), body0)


def features_and_change(f: Network, body0: Params, x: Tensor, delta: Params, linearize: bool) -> tuple[Tensor, Tensor]:
    """``(phi0(x), u(x))`` differentiable in ``x`` and ``delta`` (see module docstring).

    Linearised: one JVP gives both the base features and ``J(x) delta``.
    Non-linearised: two forwards, ``f(x; theta0 + delta) - f(x; theta0)``.
    """
    if linearize:
        (_, phi), (u, _) = jvp(lambda b: f(b, x), (body0,), (delta,))
        return phi, u
    logits0, phi = f(body0, x)
    moved = {k: body0[k] + delta[k] for k in body0}
    return phi, f(moved, x)[0] - logits0


def ridge_matrix(phi: Tensor, l2: float) -> Tensor:
    """``A = phi phi^T + l2 I`` (n, n)."""
    return phi @ phi.T + l2 * torch.eye(phi.shape[0], dtype=phi.dtype, device=phi.device)


# ------------------------------------------------------------------------ inner problems

class WholeSupportInner:
    """What the inner problems of a fixed support hold: the base network and the (detached) support.

    Everything here is detached from the support: it is what the inner solve and the
    H^-1 g solve iterate on, built once per outer step.
    """

    def __init__(self, f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float):
        self.body0 = {k: v.detach() for k, v in body0.items()}
        self.x_s, self.y_s, self.l2 = x_s.detach(), y_s.detach(), float(l2)
        self._f = f
        n, c = self.y_s.shape
        self.scale = self.l2 / (n * c)  # c = l2 / (n C)

    def loss_and_grad_at_zero(self) -> tuple[float, Params]:
        """``L_in(0)`` and ``grad L_in(0)``, where the solvers start."""
        return self.loss_and_grad(tree_zeros_like(self.body0))


class LinearizedInner(WholeSupportInner):
    """The inner problem of the linearised model (the default, convex).

    Setup: one forward of the support for ``phi0`` and the Cholesky factor of ``A``, one
    stored VJP closure so each ``J^T z`` is a backward pass only, one traced JVP.
    ``one_shot``: the problem serves one gradient or H v only (a support redrawn at every
    solver step): no trace, whose fixed cost a single JVP never pays back.
    ``chunk_rows``: store no activations; every ``J t`` and ``J^T z`` recomputes the support's
    forward ``chunk_rows`` rows at a time (:mod:`rcig.algorithm.recompute`), so the solves
    hold one chunk's activations instead of every row's, for one more forward per product
    (a support of at most ``chunk_rows`` rows is one chunk: stored as without it).
    """

    def __init__(self, f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float, one_shot: bool = False,
                 chunk_rows: int | None = None):
        super().__init__(f, body0, x_s, y_s, l2)
        if chunk_rows is not None and chunk_rows >= len(self.x_s):
            chunk_rows = None

        def logits(body: Params, x: Tensor) -> Tensor:
            return f(body, x)[0]

        if chunk_rows is None:
            (_, phi), back = vjp(lambda b: f(b, self.x_s), self.body0)
            self._vjp = lambda z: back((z, torch.zeros_like(phi)))[0]
        else:
            with torch.no_grad():
                phi = torch.cat([f(self.body0, self.x_s[rows])[1]
                                 for rows in chunk_slices(len(self.x_s), chunk_rows)])
            self._vjp = lambda z: vjp_in_chunks(logits, self.body0, self.x_s, z, chunk_rows)
        self.phi = phi.detach()
        self.chol = torch.linalg.cholesky(ridge_matrix(self.phi, self.l2))
        if chunk_rows is not None:
            self._jvp = lambda delta: jvp_in_chunks(logits, self.body0, self.x_s, delta, chunk_rows)
            return
        if one_shot:
            self._jvp = lambda delta: jvp(lambda b: logits(b, self.x_s), (self.body0,), (delta,))[1]
            return
        # A traced JVP (torch.func.linearize) reuses the forward's activations, where
        # torch.func.jvp recomputes the primal every call (BENCHMARKS.md has the saving).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, self._jvp = linearize(lambda b: logits(b, self.x_s), self.body0)

    def jvp(self, delta: Params) -> Tensor:
        """``J_s delta`` (n, C)."""
        return self._jvp(delta)

    def vjp(self, z: Tensor) -> Params:
        """``J_s^T z`` for z (n, C)."""
        return self._vjp(z)

    def solve_a(self, r: Tensor) -> Tensor:
        """``A^-1 r``."""
        return torch.cholesky_solve(r, self.chol)

    def loss_and_grad(self, delta: Params) -> tuple[float, Params]:
        r = self.y_s - self.jvp(delta)
        a_inv_r = self.solve_a(r)
        loss = 0.5 * self.scale * (float((r * a_inv_r).sum()) + float(tree_dot(delta, delta)))
        back = self.vjp(a_inv_r)
        return loss, {k: self.scale * (delta[k] - back[k]) for k in delta}

    def loss_and_grad_at_zero(self) -> tuple[float, Params]:
        """At delta = 0, u = 0 and r = Y_s: ``L_in = c/2 Y_s^T A^-1 Y_s``, ``grad = -c J^T A^-1 Y_s``.

        One VJP, no JVP (``loss_and_grad`` would spend one on a zero tangent).
        """
        a_inv_y = self.solve_a(self.y_s)
        back = self.vjp(a_inv_y)
        return 0.5 * self.scale * float((self.y_s * a_inv_y).sum()), {k: -self.scale * t for k, t in back.items()}

    def hvp(self, delta: Params, v: Params) -> Params:
        """``H v = c (J^T A^-1 J v + v)``; independent of delta (the problem is quadratic)."""
        back = self.vjp(self.solve_a(self.jvp(v)))
        return {k: self.scale * (back[k] + v[k]) for k in v}


class NonlinearInner(WholeSupportInner):
    """The same loss without linearisation: ``u = f(x; theta0 + delta) - f(x; theta0)``.

    Not convex; gradient and Hessian-vector products come from autograd (double backward).
    """

    def __init__(self, f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float):
        super().__init__(f, body0, x_s, y_s, l2)
        with torch.no_grad():
            self.logits0, self.phi = f(self.body0, self.x_s)
        self.chol = torch.linalg.cholesky(ridge_matrix(self.phi, self.l2))

    def loss(self, delta: Params) -> Tensor:
        moved = {k: self.body0[k] + delta[k] for k in delta}
        r = self.y_s - (self._f(moved, self.x_s)[0] - self.logits0)
        return 0.5 * self.scale * ((r * torch.cholesky_solve(r, self.chol)).sum() + tree_dot(delta, delta))

    def loss_and_grad(self, delta: Params) -> tuple[float, Params]:
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in delta.items()}
            loss = self.loss(leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return float(loss.detach()), dict(zip(leaves, grads))

    def hvp(self, delta: Params, v: Params) -> Params:
        with torch.enable_grad():
            leaves = {k: t.detach().requires_grad_() for k, t in delta.items()}
            grads = torch.autograd.grad(self.loss(leaves), list(leaves.values()), create_graph=True)
            hv = torch.autograd.grad(sum((g * v[k]).sum() for g, k in zip(grads, leaves)), list(leaves.values()))
        return dict(zip(leaves, hv))


def inner_problem(f: Network, body0: Params, x_s: Tensor, y_s: Tensor, l2: float, linearize: bool,
                  one_shot: bool = False, chunk_rows: int | None = None) -> InnerProblem:
    """The inner problem of the support (x_s, y_s); ``one_shot``, ``chunk_rows`` (the
    linearised model's): see :class:`LinearizedInner`."""
    if linearize:
        return LinearizedInner(f, body0, x_s, y_s, l2, one_shot, chunk_rows)
    return NonlinearInner(f, body0, x_s, y_s, l2)


# ----------------------------------------------------------------------------- solvers

class Objective(Protocol):
    """What a solver minimises, from x = 0: :class:`InnerLoss` or :class:`HinvQuadratic`."""

    def like(self) -> Params:
        """A tree shaped like x (the solve starts from its zeros)."""

    def value_and_grad(self, x: Params) -> tuple[float, Params]:
        """The value the solve records at x, and the objective's gradient there."""

    def value_and_grad_at_zero(self) -> tuple[float, Params]:
        """The recorded value and the gradient at x = 0."""

    def hvp(self, v: Params) -> Params:
        """The Hessian times v (constant where the objective is quadratic, as CG assumes)."""

    def recorded(self, value0: float, q: float) -> float:
        """The recorded value where ``q = 0.5 x^T H x + grad(0)^T x`` (the quadratic model)."""


class InnerLoss(NamedTuple):
    """``L_in(delta)`` of an inner problem, recorded as itself; its minimiser is delta*."""

    problem: InnerProblem

    def like(self) -> Params:
        return self.problem.body0

    def value_and_grad(self, delta: Params) -> tuple[float, Params]:
        return self.problem.loss_and_grad(delta)

    def value_and_grad_at_zero(self) -> tuple[float, Params]:
        return self.problem.loss_and_grad_at_zero()

    def hvp(self, v: Params) -> Params:
        return self.problem.hvp(tree_zeros_like(v), v)

    def recorded(self, value0: float, q: float) -> float:
        return value0 + q


class HinvQuadratic(NamedTuple):
    """``0.5 v^T H v - v^T g`` (H at delta), minimised by ``v = H^-1 g``; recorded as the
    residual ``v^T (H v - 2 g)``, twice its value."""

    problem: InnerProblem
    delta: Params
    g: Params

    def like(self) -> Params:
        return self.g

    def value_and_grad(self, v: Params) -> tuple[float, Params]:
        hv = self.problem.hvp(self.delta, v)
        residual = float(sum((v[k] * (hv[k] - 2 * self.g[k])).sum() for k in v))
        return residual, {k: hv[k] - self.g[k] for k in v}

    def value_and_grad_at_zero(self) -> tuple[float, Params]:
        return 0.0, {k: -t for k, t in self.g.items()}

    def hvp(self, v: Params) -> Params:
        return self.problem.hvp(self.delta, v)

    def recorded(self, value0: float, q: float) -> float:
        return 2 * q


class Solver(Protocol):
    """Minimises an :class:`Objective` from zero; a new solver is a class with this method,
    its config name and traits in :data:`rcig.config.SOLVERS`, and its branch in :func:`make_solvers`."""

    def solve(self, objective: Objective) -> SolveResult:
        """The solution and the value recorded before each step or iteration."""


class AdamSolver(NamedTuple):
    """``steps`` Adam steps at learning rate ``lr`` from x = 0 (the reference's solver).

    ``start_count``: the step count Adam starts from (its moments start at zero regardless),
    which sets its bias corrections: step j of the solve divides by ``1 - b1^(k + j)`` and
    ``sqrt(1 - b2^(k + j))`` with k = start_count. The reference's inner solve reuses the
    pool network's optimiser state, so its count starts at that network's pool-training
    steps: for a network 50 steps old the first step is 0.71x, the 20th 1.62x the size a
    fresh Adam takes. Records the value *before* each step (as the reference logs them),
    which the learning-rate tuning and adaptation read.
    """

    lr: float
    steps: int
    start_count: int = 0

    @torch.no_grad()
    def solve(self, objective: Objective) -> SolveResult:
        adam = Adam()
        x = tree_zeros_like(objective.like())
        state, values = {**adam.init(x), "count": self.start_count}, []
        for _ in range(self.steps):
            value, g = objective.value_and_grad(x)
            values.append(value)
            x, state = adam.step(x, g, state, lr=self.lr)
        return SolveResult(x, values)


class CGSolver(NamedTuple):
    """At most ``steps`` conjugate-gradient iterations on ``H x = -grad(0)`` from x = 0, the
    minimiser of a quadratic objective (no learning rate; exact after n C + 1 iterations
    for the linearised inner problem, module docstring)."""

    steps: int

    @torch.no_grad()
    def solve(self, objective: Objective) -> SolveResult:
        value0, grad0 = objective.value_and_grad_at_zero()
        x, q = conjugate_gradients(objective.hvp, {k: -t for k, t in grad0.items()}, self.steps)
        return SolveResult(x, [objective.recorded(value0, value) for value in q])


def conjugate_gradients(hvp: Callable[[Params], Params], b: Params, steps: int) -> SolveResult:
    """At most ``steps`` CG iterations on ``H x = b`` from x = 0 (H symmetric positive definite).

    Returns x and ``q(x) = 0.5 x^T H x - b^T x`` before each iteration. From x = 0 every
    iterate minimises q over its Krylov space, so ``x^T (H x - b) = 0`` and q = -0.5 b^T x
    costs nothing. Stops early once the residual vanishes.
    """
    x, r = tree_zeros_like(b), dict(b)
    p, rr = dict(b), tree_dot(b, b)
    converged = 1e-30 * max(1.0, float(rr))  # residual norm^2 at which to stop
    values = []
    for _ in range(steps):
        values.append(float(-0.5 * tree_dot(b, x)))
        if rr <= converged:
            break
        hp = hvp(p)
        step = rr / tree_dot(p, hp)
        x = {k: x[k] + step * p[k] for k in x}
        r = {k: r[k] - step * hp[k] for k in r}
        rr_next = tree_dot(r, r)
        p = {k: r[k] + (rr_next / rr) * p[k] for k in p}
        rr = rr_next
    return SolveResult(x, values)


class Solvers(NamedTuple):
    """The two solves of a meta-gradient pass."""

    inner: Solver  # delta* = argmin L_in
    hinv: Solver  # v = H^-1 g_t


def make_solvers(cfg: Config, inner_lr: float, hvp_lr: float, start_count: int) -> Solvers:
    """The solvers ``cfg.solver`` names (one of :data:`rcig.config.SOLVERS`), for a base network
    ``start_count`` pool steps old; the learning rates reach the solvers that tune them."""
    if cfg.solver == "cg":
        return Solvers(CGSolver(cfg.n_inner_steps), CGSolver(cfg.n_hinv_steps))
    if cfg.solver == "adam":
        return Solvers(AdamSolver(inner_lr, cfg.n_inner_steps, start_count), AdamSolver(hvp_lr, cfg.n_hinv_steps))
    raise ValueError(f"unknown solver {cfg.solver!r}")


__all__ = ["HEAD_WEIGHT", "AdamSolver", "BaseNetwork", "CGSolver", "HinvQuadratic", "InnerLoss", "InnerProblem",
           "LinearizedInner", "Network", "NonlinearInner", "Objective", "SolveResult", "Solver", "Solvers",
           "WholeSupportInner", "base_network", "conjugate_gradients", "features_and_change", "inner_problem",
           "make_solvers", "network", "ridge_matrix", "split_params", "tree_dot", "tree_norm"]
