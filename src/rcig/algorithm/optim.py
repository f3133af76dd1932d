"""Functional optimisers over dicts of tensors, with plain-dict states that checkpoint exactly.

Every optimiser here is *pure*: ``step`` returns new parameters and a new state and never
touches its inputs, and a state is a plain dict of tensors and ints (``torch.save`` with
``weights_only=True`` round-trips it bit-exactly), so a resumed run continues exactly.

* :class:`AdaBelief` (optax.adabelief semantics) for the support, one learning rate per leaf
  (RCIG: 0.003 for ``x`` and ``y``, 0.03 for ``log_temp``).
* :class:`Adam` (torch.optim.Adam semantics) for the inner solve, the H^-1 g solve and the pool
  networks; the learning rate is an argument of ``step`` so it can change between calls.
* :class:`EMA`: the bias-corrected moving average of the support that is saved and scored.
"""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]


def tree_zeros_like(params: Params) -> Params:
    """A dict of zero tensors shaped like ``params``."""
    return {k: torch.zeros_like(v) for k, v in params.items()}


def _check_keys(params: Params, other: dict, what: str) -> None:
    # A missing gradient would silently freeze a leaf; say which one instead.
    missing = [k for k in params if k not in other]
    if missing:
        raise KeyError(f"{what} has no entry for parameter(s) {missing}")


# ---------------------------------------------------------------------------- AdaBelief

class AdaBelief:
    r"""AdaBelief (Zhuang et al., 2020) exactly as ``optax.adabelief``, one lr per leaf.

    For a leaf with gradient g, at step t = count + 1 (count starts at 0)::

        mu     = b1 mu_old + (1 - b1) g
        nu     = b2 nu_old + (1 - b2) (g - mu_old)^2 + eps_root    # belief in the *old* moment
        mu_hat = mu / (1 - b1^t)
        nu_hat = nu / (1 - b2^t)
        x      = x - lr[leaf] * scale[leaf] * mu_hat / (sqrt(nu_hat) + eps)

    ``scale`` (an argument of ``step``, default 1 per leaf) multiplies the construction-time
    rates for that one step: a learning-rate schedule as a function of the step, so the
    state stays ``{"count": int, "mu": Params, "nu": Params}`` and checkpoints exactly.
    """

    def __init__(self, lrs: dict[str, float], b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-16, eps_root: float = 1e-16):
        self.lrs, self.b1, self.b2, self.eps, self.eps_root = dict(lrs), b1, b2, eps, eps_root

    def init(self, params: Params) -> dict:
        """Zero moments and count 0."""
        _check_keys(params, self.lrs, "AdaBelief learning rates")
        return {"count": 0, "mu": tree_zeros_like(params), "nu": tree_zeros_like(params)}

    @torch.no_grad()
    def step(self, params: Params, grads: Params, state: dict,
             scale: dict[str, float] | None = None) -> tuple[Params, dict]:
        """One step at rates ``lr[leaf] * scale.get(leaf, 1)``; returns ``(new_params, new_state)``
        and leaves the inputs untouched."""
        _check_keys(params, grads, "AdaBelief gradients")
        scale = scale or {}
        t = state["count"] + 1
        mu, nu, new = {}, {}, {}
        for k, x in params.items():
            g, mu_old = grads[k], state["mu"][k]
            mu[k] = self.b1 * mu_old + (1 - self.b1) * g
            nu[k] = self.b2 * state["nu"][k] + (1 - self.b2) * (g - mu_old) ** 2 + self.eps_root
            mu_hat = mu[k] / (1 - self.b1 ** t)
            nu_hat = nu[k] / (1 - self.b2 ** t)
            new[k] = x - self.lrs[k] * scale.get(k, 1.0) * mu_hat / (nu_hat.sqrt() + self.eps)
        return new, {"count": t, "mu": mu, "nu": nu}


# ---------------------------------------------------------------------------- Adam

def _adam_leaf(x: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int, lr: float,
               b1: float, b2: float, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One Adam step on one tensor, in torch.optim.Adam's order of operations::

        m = b1 m + (1 - b1) g            (as m + (1 - b1)(g - m), torch's lerp)
        v = b2 v + (1 - b2) g^2
        x = x - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    which is ``x - lr * m_hat / (sqrt(v_hat) + eps)`` with the bias-corrected moments.
    Returns ``(x, m, v)`` as new tensors.
    """
    m = torch.lerp(m, g, 1 - b1)
    v = b2 * v + (1 - b2) * g * g
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    denom = v.sqrt() / bc2 ** 0.5 + eps
    return x - (lr / bc1) * m / denom, m, v


class Adam:
    """Bias-corrected Adam (torch.optim.Adam semantics, no weight decay), pure and functional.

    State: ``{"count": int, "mu": Params, "nu": Params}``; ``step(params, grads, state, lr=...)``.
    """

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.b1, self.b2, self.eps = b1, b2, eps

    def init(self, params: Params) -> dict:
        """Zero moments and count 0."""
        return {"count": 0, "mu": tree_zeros_like(params), "nu": tree_zeros_like(params)}

    @torch.no_grad()
    def step(self, params: Params, grads: Params, state: dict, lr: float) -> tuple[Params, dict]:
        """One step at learning rate ``lr``; returns ``(new_params, new_state)``."""
        _check_keys(params, grads, "Adam gradients")
        t = state["count"] + 1
        new, mu, nu = {}, {}, {}
        for k, x in params.items():
            new[k], mu[k], nu[k] = _adam_leaf(x, grads[k], state["mu"][k], state["nu"][k], t, lr,
                                              self.b1, self.b2, self.eps)
        return new, {"count": t, "mu": mu, "nu": nu}


# ---------------------------------------------------------------------------- EMA

class EMA:
    r"""Bias-corrected exponential moving average (decay d), hidden state starting at zero::

        hidden_t  = d hidden_{t-1} + (1 - d) params_t
        average_t = hidden_t / (1 - d^t)          (t = number of updates so far)

    so the average after one update is exactly that update's params.
    State: ``{"count": int, "hidden": Params}``.
    """

    def __init__(self, decay: float):
        self.decay = decay

    def init(self, params: Params) -> dict:
        """Zero hidden state, no updates yet."""
        return {"count": 0, "hidden": tree_zeros_like(params)}

    @torch.no_grad()
    def update(self, state: dict, params: Params) -> dict:
        """The state after folding in ``params`` (a new dict; ``state`` is untouched)."""
        d = self.decay
        hidden = {k: d * state["hidden"][k] + (1 - d) * params[k].detach() for k in state["hidden"]}
        return {"count": state["count"] + 1, "hidden": hidden}

    def average(self, state: dict) -> Params:
        """The bias-corrected average; an error before the first update (it would be 0/0)."""
        if state["count"] == 0:
            raise ValueError("the EMA has no updates yet")
        correction = 1 - self.decay ** state["count"]
        return {k: v / correction for k, v in state["hidden"].items()}


__all__ = ["EMA", "Adam", "AdaBelief", "Params", "tree_zeros_like"]
