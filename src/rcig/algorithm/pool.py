"""The model pool: 30 networks from init to lightly trained, the base networks of RCIG.

Each outer step uses one member at random as theta0; afterwards that member trains for
randint(1, 16) Adam steps (lr 5e-5) of MSE to the current support labels, and once it has
done ``max_online_steps`` such steps it is replaced by a fresh network. Members are plain
parameter dicts with their Adam state, so the pool checkpoints exactly.
"""

from __future__ import annotations

from typing import Callable

import torch

from rcig.algorithm.optim import adam_step

Tree = dict[str, torch.Tensor]


def draw_pool_steps(generator: torch.Generator, n_max: int) -> int:
    """randint(1, n_max) with n_max exclusive, as jax.random.randint(key, (), 1, 16)."""
    return int(torch.randint(1, max(n_max, 2), (1,), generator=generator))


def fresh_params(make_model: Callable[[], torch.nn.Module], generator: torch.Generator) -> Tree:
    """A new network's parameters, initialised from a seed drawn from ``generator``."""
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


class ModelPool:
    def __init__(self, make_model: Callable[[], torch.nn.Module], size: int, lr: float,
                 max_online_steps: int, generator: torch.Generator):
        self.make_model, self.lr, self.max_online_steps = make_model, lr, max_online_steps
        self.generator = generator
        self.members = [self._new_member() for _ in range(size)]

    def _new_member(self) -> dict:
        params = fresh_params(self.make_model, self.generator)
        return {"params": params, "steps": 0, "adam": {"m": {k: torch.zeros_like(v) for k, v in params.items()},
                                                       "v": {k: torch.zeros_like(v) for k, v in params.items()},
                                                       "t": 0}}

    def __len__(self) -> int:
        return len(self.members)

    def pick(self, generator: torch.Generator) -> int:
        return int(torch.randint(0, len(self.members), (1,), generator=generator))

    def params(self, index: int) -> Tree:
        return self.members[index]["params"]

    def train(self, index: int, loss_fn: Callable[[Tree], torch.Tensor], n_steps: int) -> list[float]:
        """``n_steps`` Adam steps on ``loss_fn(params)``; replace the member once it is used up."""
        member = self.members[index]
        params = {k: v.clone() for k, v in member["params"].items()}
        adam = {"m": dict(member["adam"]["m"]), "v": dict(member["adam"]["v"]), "t": member["adam"]["t"]}
        losses = []
        for _ in range(n_steps):
            leaves = {k: v.requires_grad_() for k, v in params.items()}
            with torch.enable_grad():
                loss = loss_fn(leaves)
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            losses.append(float(loss.detach()))
            params = adam_step({k: v.detach() for k, v in leaves.items()}, grads, adam, self.lr)
        member = {"params": params, "steps": member["steps"] + n_steps, "adam": adam}
        self.members[index] = self._new_member() if member["steps"] >= self.max_online_steps else member
        return losses

    def state_dict(self) -> dict:
        return {"members": self.members, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.members = state["members"]
        self.generator.set_state(state["generator"])
