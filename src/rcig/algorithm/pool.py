"""The model pool: networks from init to lightly trained, the base networks theta0 of RCIG.

Each outer step uses one member at random as theta0; afterwards that member trains for
randint(1, 16) Adam steps (lr 5e-5) of MSE to the current support labels, and once it has
done ``max_online_steps`` such steps it is replaced by a fresh network. Members are plain
parameter dicts with their Adam state and step count, and every fresh init is seeded from
the pool's own generator, so the pool checkpoints and resumes bit-exactly.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rcig.algorithm.meta import augmented, grad_rows
from rcig.algorithm.optim import Adam, Params
from rcig.errors import RcigError


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


def pool_loss(model: torch.nn.Module, params: Params, x_s: torch.Tensor, y_s: torch.Tensor) -> torch.Tensor:
    """The pool networks' training loss: sum 0.5 (f(x) - y)^2 / (n C) on the support rows."""
    logits = torch.func.functional_call(model, params, (x_s,))
    return 0.5 * ((logits - y_s) ** 2).sum() / y_s.numel()


def support_loss(model: torch.nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, rows_per_step: int | None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None,
                 generator: torch.Generator) -> Callable[[Params], torch.Tensor]:
    """``params -> pool_loss`` on the support (``x_s``, ``y_s``: its rows, flip copies
    included), on ``rows_per_step`` random rows at each call (None: all), freshly augmented
    at each call if ``augment`` is set; the draws come from ``generator``."""
    def loss(params: Params) -> torch.Tensor:
        rows = grad_rows(len(x_s), rows_per_step, generator)
        x, y = (x_s, y_s) if rows is None else (x_s[rows], y_s[rows])
        return pool_loss(model, params, augmented(x, augment), y)

    return loss


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


__all__ = ["ModelPool", "draw_pool_steps", "draw_seed", "loss_and_grads", "params_from_seed", "pool_loss", "support_loss"]
