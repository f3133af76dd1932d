"""The maths of RCIG on tiny float64 problems, each test able to fail.

(a) the linearised output is a directional derivative of the network;
(b) the closed-form last layer is the minimiser plain gradient descent finds;
(c) the inner loss equals its collapsed ridge form and its Hessian is positive definite;
(d) Hessian-vector products match finite differences of the gradient;
(e) the iterative H^-1 g approaches an exact solve;
(f) direct + implicit gradient equals differentiating through an exact inner solve;
(g) the CG solvers are exact after n C + 1 iterations (H = c I + rank n C).
"""

import pytest
import torch
from torch.func import functional_call

from rcig.algorithm.inner import (
    HEAD_WEIGHT, LinearizedInner, NonlinearInner, features_and_change, network, ridge_matrix,
    AdamSolver, BaseNetwork, CGSolver, HinvQuadratic, InnerLoss, split_params, tree_dot,
)
from rcig.algorithm.meta import Batch, GradSettings, direct_gradient, implicit_gradient, inner_prediction, outer_loss
from rcig.models import build_model

C, N_S, N_T, L2 = 3, 6, 9, 0.05


pytestmark = pytest.mark.usefixtures("float64")  # every test here computes in float64


def tiny_problem(seed=0, beta=4.0):
    """A depth-2 softplus ConvNet of width 2 on 8x8 gray images: ~200 parameters."""
    torch.manual_seed(seed)
    model = build_model("conv", in_channels=1, num_classes=C, image_size=8, depth=2, width=2,
                        activation="softplus", beta=beta).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    body0, head0 = split_params(params)
    g = torch.Generator().manual_seed(seed + 1)
    x_s = torch.randn(N_S, 1, 8, 8, generator=g)
    y_s = torch.nn.functional.one_hot(torch.arange(N_S) % C, C).double() - 1.0 / C
    y_s = y_s + 0.05 * torch.randn(N_S, C, generator=g)
    x_t = torch.randn(N_T, 1, 8, 8, generator=g)
    y_t = torch.arange(N_T) % C
    delta = {k: 0.3 * torch.randn(v.shape, generator=g) for k, v in body0.items()}
    return model, network(model, head0), body0, head0, x_s, y_s, x_t, y_t, delta


def flat(tree):
    return torch.cat([t.reshape(-1) for t in tree.values()])


def unflat(vec, like):
    out, i = {}, 0
    for k, t in like.items():
        out[k] = vec[i:i + t.numel()].reshape(t.shape)
        i += t.numel()
    return out


def full_hessian(problem, delta):
    p = flat(delta).numel()
    cols = [flat(problem.hvp(delta, unflat(e, delta))) for e in torch.eye(p)]
    return torch.stack(cols, dim=1)


def test_a_linearised_output_is_directional_derivative():
    model, f, body0, head0, x_s, *_, delta = tiny_problem()
    _, u = features_and_change(f, body0, x_s, delta, linearize=True)
    eps = 1e-5
    plus = f({k: body0[k] + eps * delta[k] for k in body0}, x_s)[0]
    minus = f({k: body0[k] - eps * delta[k] for k in body0}, x_s)[0]
    torch.testing.assert_close(u, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-8)
    # and the features are the base network's own
    feats = functional_call(model, {**body0, HEAD_WEIGHT: head0}, (x_s,), {"return_features": True})[1]
    torch.testing.assert_close(features_and_change(f, body0, x_s, delta, True)[0], feats)


def test_b_closed_form_last_layer_equals_gradient_descent_minimiser():
    _, f, body0, _, x_s, y_s, x_t, _, delta = tiny_problem()
    phi_s, u_s = features_and_change(f, body0, x_s, delta, True)
    phi_t, u_t = features_and_change(f, body0, x_t, delta, True)
    phi_s, u_s, phi_t, u_t = (t.detach() for t in (phi_s, u_s, phi_t, u_t))
    # Minimise 0.5||Y - u - phi W^T||^2 + 0.5 l2 ||W||^2 over the final-layer weight W by GD.
    w = torch.zeros(C, phi_s.shape[1])
    lipschitz = torch.linalg.eigvalsh(phi_s.T @ phi_s).max() + L2
    for _ in range(20000):
        grad = -(y_s - u_s - phi_s @ w.T).T @ phi_s + L2 * w
        w = w - grad / lipschitz
    closed = inner_prediction(phi_s, u_s, y_s, phi_t, u_t, L2)
    torch.testing.assert_close(u_t + phi_t @ w.T, closed, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cls", [LinearizedInner, NonlinearInner])
def test_c_inner_loss_is_collapsed_ridge_form(cls):
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = cls(f, body0, x_s, y_s, L2)
    loss, _ = problem.loss_and_grad(delta)
    # The expanded form of docs/algorithm.md, "The convexified inner problem":
    # squared error + l2 (tr(alpha^T K alpha) + ||delta||^2).
    phi_s, u_s = features_and_change(f, body0, x_s, delta, cls is LinearizedInner)
    k_ss = phi_s @ phi_s.T
    alpha = torch.linalg.solve(ridge_matrix(phi_s, L2), y_s - u_s)
    pred_s = u_s + k_ss @ alpha
    expanded = (0.5 * ((y_s - pred_s) ** 2).sum()
                + 0.5 * L2 * (torch.trace(alpha.T @ k_ss @ alpha) + tree_dot(delta, delta))) / (N_S * C)
    assert loss == pytest.approx(float(expanded), rel=1e-10)


def test_c_linearised_hessian_is_symmetric_positive_definite():
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    hess = full_hessian(LinearizedInner(f, body0, x_s, y_s, L2), delta)
    torch.testing.assert_close(hess, hess.T, rtol=1e-9, atol=1e-12)
    eigenvalues = torch.linalg.eigvalsh(hess)
    # H = c (J^T A^-1 J + I) >= c I
    assert eigenvalues.min() >= L2 / (N_S * C) * (1 - 1e-9)


@pytest.mark.parametrize("cls", [LinearizedInner, NonlinearInner])
def test_d_hvp_matches_finite_difference_of_gradient(cls):
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = cls(f, body0, x_s, y_s, L2)
    g = torch.Generator().manual_seed(7)
    v = {k: torch.randn(t.shape, generator=g) for k, t in delta.items()}
    eps = 1e-5
    plus = problem.loss_and_grad({k: delta[k] + eps * v[k] for k in v})[1]
    minus = problem.loss_and_grad({k: delta[k] - eps * v[k] for k in v})[1]
    fd = {k: (plus[k] - minus[k]) / (2 * eps) for k in v}
    torch.testing.assert_close(flat(problem.hvp(delta, v)), flat(fd), rtol=1e-6, atol=1e-10)


def test_d_gradient_matches_finite_difference_of_loss():
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    _, grad = problem.loss_and_grad(delta)
    g = torch.Generator().manual_seed(3)
    v = {k: torch.randn(t.shape, generator=g) for k, t in delta.items()}
    eps = 1e-6
    fd = (problem.loss_and_grad({k: delta[k] + eps * v[k] for k in v})[0]
          - problem.loss_and_grad({k: delta[k] - eps * v[k] for k in v})[0]) / (2 * eps)
    assert float(tree_dot(grad, v)) == pytest.approx(fd, rel=1e-6)


def test_d_linearised_start_point_shortcut_matches_general_gradient():
    # loss_and_grad_at_zero skips the JVP (u = 0 at delta = 0); it must equal the general path
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    loss, grad = problem.loss_and_grad_at_zero()
    loss_ref, grad_ref = problem.loss_and_grad({k: torch.zeros_like(t) for k, t in delta.items()})
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    torch.testing.assert_close(flat(grad), flat(grad_ref), rtol=1e-10, atol=1e-14)


def test_e_iterative_hinv_approaches_exact_solve():
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    g = torch.Generator().manual_seed(5)
    # a right-hand side whose solution is of order one, so that Adam's step size fits it
    rhs = problem.hvp(delta, {k: torch.randn(t.shape, generator=g) for k, t in delta.items()})
    exact = torch.linalg.solve(full_hessian(problem, delta), flat(rhs))
    errors = []
    for steps in (20, 200, 2000):
        v, residuals = AdamSolver(lr=0.01, steps=steps).solve(HinvQuadratic(problem, delta, rhs))
        errors.append(float((flat(v) - exact).norm() / exact.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3
    # the residual v^T(Hv - 2g) = 2 * objective must go down
    assert residuals[-1] < residuals[1] < 0


def test_inner_solve_decreases_loss_to_the_exact_minimiser():
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    d_star, losses = AdamSolver(lr=0.02, steps=3000).solve(InnerLoss(problem))
    exact_loss = problem.loss_and_grad(exact_inner_solution(f, body0, x_s, y_s))[0]
    assert losses[0] > losses[100] > losses[-1]
    assert losses[-1] == pytest.approx(exact_loss, rel=1e-4)


def jacobian(f, body0, x):
    """J (n*C, P) of the logits with respect to the flattened body."""
    def logits(vec):
        return f(unflat(vec, body0), x)[0].reshape(-1)
    return torch.func.jacfwd(logits)(flat(body0))


def exact_inner_solution(f, body0, x_s, y_s):
    """argmin of the linearised inner loss: delta* = (J^T A^-1 J + I)^-1 J^T A^-1 Y (per class)."""
    n, c = y_s.shape
    jac = jacobian(f, body0, x_s).reshape(n, c, -1)
    phi = f(body0, x_s)[1]
    a_inv = torch.linalg.inv(ridge_matrix(phi, L2))
    # J^T A^-1 J = sum_c J_c^T A^-1 J_c ; J^T A^-1 Y = sum_c J_c^T A^-1 Y_c
    m = torch.einsum("icp,ij,jcq->pq", jac, a_inv, jac) + torch.eye(jac.shape[-1])
    rhs = torch.einsum("icp,ij,jc->p", jac, a_inv, y_s)
    return unflat(torch.linalg.solve(m, rhs), body0)


def test_f_meta_gradient_matches_differentiating_through_exact_solve():
    _, f, body0, _, x_s, y_s, x_t, y_t, _ = tiny_problem(seed=3)
    log_temp = torch.tensor(0.3)
    support = {"x": x_s, "y": y_s, "log_temp": log_temp}

    # Reference: L_out(delta*(S), S) with delta*(S) the exact minimiser, differentiated by autograd.
    x = x_s.clone().requires_grad_()
    y = y_s.clone().requires_grad_()
    d_star = exact_inner_solution(f, body0, x, y)
    phi_s, u_s = features_and_change(f, body0, x, d_star, True)
    phi_t, u_t = features_and_change(f, body0, x_t, d_star, True)
    loss = outer_loss(inner_prediction(phi_s, u_s, y, phi_t, u_t, L2), y_t, log_temp, y)
    want_x, want_y = torch.autograd.grad(loss, [x, y])

    # RCIG: direct gradient at delta*, v = H^-1 g_t solved exactly, implicit gradient.
    delta = {k: t.detach() for k, t in exact_inner_solution(f, body0, x_s, y_s).items()}
    opts = dict(l2=L2, flip=False, linearize=True, learn_labels=True)
    result = direct_gradient(BaseNetwork(f, body0), support, delta, Batch(x_t, y_t), GradSettings(**opts))
    direct, g_t = result.grads, result.g_t
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    v = unflat(torch.linalg.solve(full_hessian(problem, delta), flat(g_t)), delta)
    implicit = implicit_gradient(BaseNetwork(f, body0), support, delta, v, GradSettings(**opts))
    torch.testing.assert_close(direct["x"] + implicit["x"], want_x, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(direct["y"] + implicit["y"], want_y, rtol=1e-5, atol=1e-9)
    # and the implicit part is not negligible, so this test would notice it missing
    assert implicit["x"].norm() > 0.05 * direct["x"].norm()


def test_g_cg_inner_solve_is_exact_after_n_c_plus_one_iterations():
    _, f, body0, _, x_s, y_s, _, _, _ = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    exact = exact_inner_solution(f, body0, x_s, y_s)
    few, _ = CGSolver(3).solve(InnerLoss(problem))
    d_star, losses = CGSolver(N_S * C + 1).solve(InnerLoss(problem))
    torch.testing.assert_close(flat(d_star), flat(exact), rtol=1e-6, atol=1e-9)
    assert float((flat(few) - flat(exact)).norm()) > 1e-3 * float(flat(exact).norm())  # not exact at once
    # the recorded L_in is the true loss of each iterate, and it never rises
    assert losses[0] == pytest.approx(problem.loss_and_grad({k: 0 * t for k, t in body0.items()})[0])
    assert losses[0] > losses[1] > losses[2]
    assert all(a >= b - 1e-14 for a, b in zip(losses[:-1], losses[1:]))
    assert losses[-1] == pytest.approx(problem.loss_and_grad(exact)[0], rel=1e-8)


def test_g_cg_hinv_is_exact_and_its_residual_falls():
    _, f, body0, _, x_s, y_s, _, _, delta = tiny_problem()
    problem = LinearizedInner(f, body0, x_s, y_s, L2)
    g = {k: torch.randn(t.shape, generator=torch.Generator().manual_seed(9)) for k, t in delta.items()}
    exact = torch.linalg.solve(full_hessian(problem, delta), flat(g))
    v, residuals = CGSolver(N_S * C + 1).solve(HinvQuadratic(problem, delta, g))
    torch.testing.assert_close(flat(v), exact, rtol=1e-6, atol=1e-9)
    assert residuals[0] > residuals[1] > residuals[2]
    assert all(a >= b - 1e-14 for a, b in zip(residuals[:-1], residuals[1:]))
    want = float(exact @ (flat(problem.hvp(delta, unflat(exact, delta))) - 2 * flat(g)))
    assert residuals[-1] == pytest.approx(want, rel=1e-6)
