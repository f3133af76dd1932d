"""Functional optimisers over dicts of tensors, with plain-dict states that checkpoint
exactly, and the model pool they train.

Every optimiser here is *pure*: ``step`` returns new parameters and a new state and never
touches its inputs, and a state is a plain dict of tensors and ints (``torch.save`` with
``weights_only=True`` round-trips it bit-exactly), so a resumed run continues exactly.

* :class:`AdaBelief` (optax.adabelief semantics) for the support, one learning rate per leaf
  (RCIG: 0.003 for ``x`` and ``y``, 0.03 for ``log_temp``).
* :class:`Adam` (torch.optim.Adam semantics) for the inner solve, the H^-1 g solve and the pool
  networks; the learning rate is an argument of ``step`` so it can change between calls.
* :class:`EMA`: the bias-corrected moving average of the support that is saved and scored.

The model pool (:class:`ModelPool`): networks from init to lightly trained, the base
networks theta0 of RCIG. Each outer step uses one member at random as theta0; afterwards that member trains for
randint(1, 16) Adam steps (lr 5e-5) of MSE to the current support labels, and once it has
done ``max_online_steps`` such steps it is replaced by a fresh network. Members are plain
parameter dicts with their Adam state and step count, and every fresh init is seeded from
the pool's own generator, so the pool checkpoints and resumes bit-exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rcig.errors import RcigError
from rcig.algorithm.recompute import Params, in_chunks


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


# ---------------------------------------------------------------------------- the model pool




def draw_pool_steps(generator: torch.Generator, n_max: int) -> int:
    """Steps for a used network: uniform on {1, ..., n_max - 1} (``n_max`` exclusive), as
    ``jax.random.randint(key, (), 1, n_max)``; n_max = 16 gives 1..15. n_max <= 2 gives 1."""
    return int(torch.randint(1, max(n_max, 2), (1,), generator=generator))


def draw_seed(generator: torch.Generator) -> int:
    """A network init seed, drawn from the pool's generator."""
    return int(torch.randint(0, 2 ** 62, (1,), generator=generator))


def params_from_seed(make_model: Callable[[], torch.nn.Module], seed: int) -> Params:
    """A new network's parameters (name -> tensor), initialised under ``torch.manual_seed(seed)``
    with torch's global RNG forked around it: the result depends on ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def pool_loss(model: torch.nn.Module, params: Params, x_s: torch.Tensor, y_s: torch.Tensor,
              chunk_rows: int | None = None) -> torch.Tensor:
    """The pool networks' training loss: sum 0.5 (f(x) - y)^2 / (n C) on the support rows.
    ``chunk_rows``: the logits ``chunk_rows`` rows at a time, recomputed for the backward
    (:func:`rcig.algorithm.recompute.in_chunks`; None: one graph)."""
    (logits,) = in_chunks(lambda x, p: (torch.func.functional_call(model, p, (x,)),), x_s, params, chunk_rows)
    return 0.5 * ((logits - y_s) ** 2).sum() / y_s.numel()


def support_loss(model: torch.nn.Module, draw: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 chunk_rows: int | None = None) -> Callable[[Params], torch.Tensor]:
    """``params -> pool_loss`` on the support rows ``draw()`` gives at each call (all of them,
    or fresh random and/or augmented ones: :func:`rcig.algorithm.meta.row_draw`), in chunks
    of ``chunk_rows`` (:func:`pool_loss`)."""
    return lambda params: pool_loss(model, params, *draw(), chunk_rows)


def loss_and_grads(loss_fn: Callable[[Params], torch.Tensor], params: Params) -> tuple[float, Params]:
    """``loss_fn(params)`` and its gradient with respect to every leaf, by autograd."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), dict(zip(leaves, grads))


class ModelPool:
    """``size`` networks. A member is ``{"seed": int, "steps": int, "params": Params | None,
    "adam": Adam state | None}``: a member that has not trained yet (steps 0) is its init seed
    alone, its weights built from the seed when first used and never stored in a checkpoint
    (the weights of a trained one and its Adam moments are: exact resume needs them)."""

    def __init__(self, make_model: Callable[[], torch.nn.Module], size: int, lr: float,
                 max_online_steps: int, generator: torch.Generator):
        self.make_model, self.lr, self.max_online_steps = make_model, lr, max_online_steps
        self.generator = generator
        self.adam = Adam()
        self.members = [self._new_member() for _ in range(size)]

    def _new_member(self) -> dict[str, Any]:
        return {"seed": draw_seed(self.generator), "steps": 0, "params": None, "adam": None}

    def __len__(self) -> int:
        return len(self.members)

    def pick(self, generator: torch.Generator) -> int:
        """A member index, uniform on {0, ..., size - 1}, drawn from ``generator``."""
        return int(torch.randint(0, len(self.members), (1,), generator=generator))

    def params(self, index: int) -> Params:
        """Member ``index``'s current weights theta0 (do not modify in place)."""
        member = self.members[index]
        if member["params"] is None:
            member["params"] = params_from_seed(self.make_model, member["seed"])
        return member["params"]

    def steps(self, index: int) -> int:
        """How many training steps member ``index`` has done since its init (the inner
        solve's Adam count starts there, as the reference's does)."""
        return self.members[index]["steps"]

    def train(self, index: int, loss_fn: Callable[[Params], torch.Tensor], n_steps: int) -> list[float]:
        """``n_steps`` Adam steps (lr ``self.lr``) on ``loss_fn(params) -> scalar``.

        The member's weights and Adam state advance; once its step count reaches
        ``max_online_steps`` it is replaced by a fresh network. Returns the loss before each step.
        """
        member = self.members[index]
        params = self.params(index)
        adam_state, losses = member["adam"] or self.adam.init(params), []
        for _ in range(n_steps):
            loss, grads = loss_and_grads(loss_fn, params)
            losses.append(loss)
            params, adam_state = self.adam.step(params, grads, adam_state, lr=self.lr)
        steps = member["steps"] + n_steps
        used_up = steps >= self.max_online_steps
        self.members[index] = self._new_member() if used_up else \
            {"seed": member["seed"], "steps": steps, "params": params, "adam": adam_state}
        return losses

    def state_dict(self) -> dict[str, Any]:
        """What exact resume needs: each member's seed and steps, plus the weights and Adam
        moments of those that have trained; the generator state (weights_only-safe)."""
        return {"members": [_stored(m) for m in self.members], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any], where: str = "checkpoint") -> None:
        """Restore :meth:`state_dict`'s output, checked against this pool's network shapes;
        the pool then continues bit-exactly."""
        from rcig.validate import checkpoint_like

        params = params_from_seed(self.make_model, 0)
        whole = {"seed": 0, "steps": 0, "params": params, "adam": {"count": 0, "mu": params, "nu": params}}
        checkpoint_like({"members": [], "generator": self.generator.get_state()}, state, where, "pool")
        members = []
        for i, member in enumerate(state["members"]):
            stored_whole = isinstance(member, dict) and "params" in member
            checkpoint_like(whole if stored_whole else {"seed": 0, "steps": 0}, member, where, f"pool.members[{i}]")
            if member["steps"] < 0 or not 0 <= member["seed"] < 2 ** 62 or (stored_whole and member["adam"]["count"] != member["steps"]) or \
                    (not stored_whole and member["steps"] != 0):
                raise RcigError(f"{where} is not a checkpoint of this run (pool.members[{i}]: inconsistent seed or steps)")
            members.append({"seed": member["seed"], "steps": member["steps"],
                            "params": dict(member["params"]) if stored_whole else None,
                            "adam": _copy_adam(member["adam"]) if stored_whole else None})
        if len(members) != len(self.members):
            raise RcigError(f"{where} is not a checkpoint of this run (the pool holds {len(members)} networks, "
                            f"the config {len(self.members)})")
        self.generator.set_state(state["generator"])
        self.members = members


def _copy_adam(adam: dict[str, Any]) -> dict[str, Any]:
    return {"count": int(adam["count"]), "mu": dict(adam["mu"]), "nu": dict(adam["nu"])}


def _stored(member: dict[str, Any]) -> dict[str, Any]:
    """A member as a checkpoint holds it: seed and steps alone until it has trained (its
    weights follow from the seed), whole afterwards."""
    if member["steps"] == 0:
        return {"seed": member["seed"], "steps": 0}
    return {"seed": member["seed"], "steps": member["steps"], "params": dict(member["params"]),
            "adam": _copy_adam(member["adam"])}


__all__ = ["EMA", "Adam", "AdaBelief", "ModelPool", "Params", "draw_pool_steps", "draw_seed", "loss_and_grads",
           "params_from_seed", "pool_loss", "support_loss", "tree_zeros_like"]
