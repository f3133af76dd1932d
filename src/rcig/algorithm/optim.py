"""Functional optimisers over dicts of tensors, with plain-dict states that checkpoint exactly.

* :class:`AdaBelief` (optax semantics) for the support: per-leaf learning rates.
* :class:`EMA`: the bias-corrected moving average of the support that is saved and scored.
* :func:`adam_step`: plain Adam, for the inner solves and the pool networks.
"""

from __future__ import annotations

import torch

Tree = dict[str, torch.Tensor]


class AdaBelief:
    r"""AdaBelief (Zhuang et al., 2020) as optax.adabelief, with a learning rate per leaf.

    With gradient g and step count t::

        s   <- b2 s + (1 - b2) (g - m_old)^2 + eps_root
        m   <- b1 m + (1 - b1) g
        x   <- x - lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    """

    def __init__(self, lrs: dict[str, float], b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-16, eps_root: float = 1e-16):
        self.lrs, self.b1, self.b2, self.eps, self.eps_root = dict(lrs), b1, b2, eps, eps_root

    def init(self, params: Tree) -> dict:
        return {"count": 0, "mu": {k: torch.zeros_like(v) for k, v in params.items()},
                "nu": {k: torch.zeros_like(v) for k, v in params.items()}}

    @torch.no_grad()
    def step(self, params: Tree, grads: Tree, state: dict) -> tuple[Tree, dict]:
        t = state["count"] + 1
        mu, nu, new = {}, {}, {}
        for k, x in params.items():
            g = grads[k]
            nu[k] = self.b2 * state["nu"][k] + (1 - self.b2) * (g - state["mu"][k]) ** 2 + self.eps_root
            mu[k] = self.b1 * state["mu"][k] + (1 - self.b1) * g
            m_hat = mu[k] / (1 - self.b1 ** t)
            s_hat = nu[k] / (1 - self.b2 ** t)
            new[k] = x - self.lrs[k] * m_hat / (s_hat.sqrt() + self.eps)
        return new, {"count": t, "mu": mu, "nu": nu}


class EMA:
    """hidden <- d hidden + (1 - d) params;  average = hidden / (1 - d^t)  (hidden starts at 0)."""

    def __init__(self, decay: float):
        self.decay = decay

    def init(self, params: Tree) -> dict:
        return {"count": 0, "hidden": {k: torch.zeros_like(v) for k, v in params.items()}}

    @torch.no_grad()
    def update(self, state: dict, params: Tree) -> dict:
        d = self.decay
        hidden = {k: d * state["hidden"][k] + (1 - d) * params[k].detach() for k in params}
        return {"count": state["count"] + 1, "hidden": hidden}

    def average(self, state: dict) -> Tree:
        if state["count"] == 0:
            raise ValueError("the EMA has no updates yet")
        correction = 1 - self.decay ** state["count"]
        return {k: v / correction for k, v in state["hidden"].items()}


@torch.no_grad()
def adam_step(params: Tree, grads: Tree, state: dict, lr: float, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> Tree:
    """One bias-corrected Adam step (torch.optim.Adam semantics); updates ``state`` in place."""
    state["t"] += 1
    t = state["t"]
    out = {}
    for k, x in params.items():
        state["m"][k] = b1 * state["m"][k] + (1 - b1) * grads[k]
        state["v"][k] = b2 * state["v"][k] + (1 - b2) * grads[k] ** 2
        m_hat = state["m"][k] / (1 - b1 ** t)
        v_hat = state["v"][k] / (1 - b2 ** t)
        out[k] = x - lr * m_hat / (v_hat.sqrt() + eps)
    return out
