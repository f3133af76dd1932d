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

from rcig.algorithm.optim import Adam, Tree
from rcig.errors import RcigError


def draw_pool_steps(generator: torch.Generator, n_max: int) -> int:
    """Steps for a used network: uniform on {1, ..., n_max - 1} (``n_max`` exclusive), as
    ``jax.random.randint(key, (), 1, n_max)``; n_max = 16 gives 1..15. n_max <= 2 gives 1."""
    return int(torch.randint(1, max(n_max, 2), (1,), generator=generator))


def fresh_params(make_model: Callable[[], torch.nn.Module], generator: torch.Generator) -> Tree:
    """A new network's parameters (name -> tensor), its init seeded from ``generator``.

    The seed is drawn from the pool's generator and torch's global RNG is forked around the
    init, so the result depends only on ``generator`` and the global stream is left alone.
    """
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_and_grads(loss_fn: Callable[[Tree], torch.Tensor], params: Tree) -> tuple[float, Tree]:
    """``loss_fn(params)`` and its gradient with respect to every leaf, by autograd."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()))
    return float(loss.detach()), dict(zip(leaves, grads))


class ModelPool:
    """``size`` networks, each ``{"params": Tree, "adam": Adam state, "steps": int}``."""

    def __init__(self, make_model: Callable[[], torch.nn.Module], size: int, lr: float,
                 max_online_steps: int, generator: torch.Generator):
        self.make_model, self.lr, self.max_online_steps = make_model, lr, max_online_steps
        self.generator = generator
        self.adam = Adam()
        self.members = [self._new_member() for _ in range(size)]

    def _new_member(self) -> dict[str, Any]:
        params = fresh_params(self.make_model, self.generator)
        return {"params": params, "adam": self.adam.init(params), "steps": 0}

    def __len__(self) -> int:
        return len(self.members)

    def pick(self, generator: torch.Generator) -> int:
        """A member index, uniform on {0, ..., size - 1}, drawn from ``generator``."""
        return int(torch.randint(0, len(self.members), (1,), generator=generator))

    def params(self, index: int) -> Tree:
        """Member ``index``'s current weights theta0 (do not modify in place)."""
        return self.members[index]["params"]

    def steps(self, index: int) -> int:
        """How many training steps member ``index`` has done since its init (the inner
        solve's Adam count starts there, as the reference's does)."""
        return self.members[index]["steps"]

    def train(self, index: int, loss_fn: Callable[[Tree], torch.Tensor], n_steps: int) -> list[float]:
        """``n_steps`` Adam steps (lr ``self.lr``) on ``loss_fn(params) -> scalar``.

        The member's weights and Adam state advance; once its step count reaches
        ``max_online_steps`` it is replaced by a fresh network. Returns the loss before each step.
        """
        member = self.members[index]
        params, adam_state, losses = member["params"], member["adam"], []
        for _ in range(n_steps):
            loss, grads = loss_and_grads(loss_fn, params)
            losses.append(loss)
            params, adam_state = self.adam.step(params, grads, adam_state, lr=self.lr)
        steps = member["steps"] + n_steps
        used_up = steps >= self.max_online_steps
        self.members[index] = self._new_member() if used_up else \
            {"params": params, "adam": adam_state, "steps": steps}
        return losses

    def state_dict(self) -> dict[str, Any]:
        """Everything the pool holds: every member and the generator state (weights_only-safe)."""
        return {"members": [_copy_member(m) for m in self.members], "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the pool then continues bit-exactly."""
        try:
            members = [_copy_member(m) for m in state["members"]]
            self.generator.set_state(state["generator"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise RcigError(f"bad model-pool state in checkpoint: {exc!r}") from None
        self.members = members


def _copy_member(member: dict[str, Any]) -> dict[str, Any]:
    """A member with fresh containers (tensors shared: nothing here updates them in place)."""
    adam = member["adam"]
    return {"params": dict(member["params"]), "steps": int(member["steps"]),
            "adam": {"count": int(adam["count"]), "mu": dict(adam["mu"]), "nu": dict(adam["nu"])}}


__all__ = ["ModelPool", "draw_pool_steps", "fresh_params", "loss_and_grads"]
