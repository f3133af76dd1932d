r"""Row-wise functions of the support evaluated in chunks of rows, recomputed for the backward.

A step differentiates functions of the form ``fn(x, params) -> (out_1 (n, ...), ...)``
whose row i depends on row i of ``x`` alone (the network's features and their JVPs; no
batch statistics). Stored whole, the graph of such a function holds every row's
activations at once. :func:`in_chunks` computes the same outputs with the same gradients
while holding one chunk's:

    forward:   out = cat_k fn(x_k, params)         k = chunks of ``size`` rows, no graph kept
    backward:  for each chunk k, recompute fn(x_k, params) with its graph, then
               dL/dx_k      = (dL/dout_k)^T d fn(x_k, params)/dx_k              (rows of k)
               dL/dparams  += (dL/dout_k)^T d fn(x_k, params)/dparams          (summed over k)

so a step's peak memory is set by ``size`` rather than by the row count, at the price of one
more forward per chunk. The values are the whole-batch ones up to the order of float
summation in the ``params`` gradient. First derivatives only (the backward is not itself
differentiable).

The inner problem's products with the Jacobian ``J = d logits(X_s) / d body`` chunk the same
way, without storing anything between calls: ``J t = cat_k J_k t`` (:func:`jvp_in_chunks`)
and ``J^T z = sum_k J_k^T z_k`` (:func:`vjp_in_chunks`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.func import jvp, vjp

Params = dict[str, Tensor]  # a network's parameters by name (the type every algorithm module uses)
RowFunction = Callable[[Tensor, Params], tuple[Tensor, ...]]  # (x (n, ...), params) -> outputs (n, ...)


def chunk_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` rows covering ``range(n)``."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Recomputed(torch.autograd.Function):
    """:func:`in_chunks` as an autograd node (inputs: x, then the params' values in order)."""

    @staticmethod
    def forward(ctx, fn: RowFunction, size: int, names: tuple[str, ...], x: Tensor, *values: Tensor):
        ctx.fn, ctx.size, ctx.names = fn, size, names
        ctx.save_for_backward(x, *values)
        params = dict(zip(names, values))
        parts = [fn(x[rows], params) for rows in chunk_slices(len(x), size)]
        return tuple(torch.cat(column) for column in zip(*parts))

    @staticmethod
    def backward(ctx, *cotangents: Tensor):
        x, *values = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(t) if need else None for t, need in zip([x, *values], needs)]
        for rows in chunk_slices(len(x), ctx.size):
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(need) for t, need in zip([x[rows], *values], needs)]
                outputs = ctx.fn(leaves[0], dict(zip(ctx.names, leaves[1:])))
                pairs = [(out, cot[rows]) for out, cot in zip(outputs, cotangents) if out.requires_grad]
                wrt = [j for j, need in enumerate(needs) if need]
                if not pairs or not wrt:
                    continue
                parts = torch.autograd.grad([out for out, _ in pairs], [leaves[j] for j in wrt],
                                            [cot for _, cot in pairs], allow_unused=True)
            for j, part in zip(wrt, parts):
                if part is None:  # this input does not reach the outputs
                    continue
                if j == 0:
                    grads[0][rows] = part  # row i of x reaches row i of the outputs only
                else:
                    grads[j] += part
        return (None, None, None, *grads)


def in_chunks(fn: RowFunction, x: Tensor, params: Params, size: int | None) -> tuple[Tensor, ...]:
    """``fn(x, params)``, differentiable in ``x`` and ``params``; with ``size`` set, computed
    ``size`` rows at a time and recomputed chunk by chunk in the backward (module docstring).
    ``size`` None, or no fewer than the rows: ``fn(x, params)`` itself, one graph over every row."""
    if size is None or size >= len(x):
        return tuple(fn(x, params))
    names = tuple(params)
    return _Recomputed.apply(fn, size, names, x, *(params[k] for k in names))


def jvp_in_chunks(g: Callable[[Params, Tensor], Tensor], primal: Params, x: Tensor, tangent: Params,
                  size: int) -> Tensor:
    """``J tangent`` (n, ...) for ``J = d g(params, x) / d params`` at ``primal``, ``size`` rows
    of ``x`` at a time (each chunk one forward-mode pass, nothing kept)."""
    return torch.cat([jvp(lambda b: g(b, x[rows]), (primal,), (tangent,))[1] for rows in chunk_slices(len(x), size)])


def vjp_in_chunks(g: Callable[[Params, Tensor], Tensor], primal: Params, x: Tensor, cotangent: Tensor,
                  size: int) -> Params:
    """``J^T cotangent`` = sum over chunks k of ``J_k^T cotangent_k``, ``size`` rows of ``x`` at a
    time (each chunk one forward and one backward, its graph freed before the next)."""
    total = None
    for rows in chunk_slices(len(x), size):
        _, back = vjp(lambda b: g(b, x[rows]), primal)
        part = back(cotangent[rows])[0]
        total = part if total is None else {k: total[k] + part[k] for k in total}
    return total


__all__ = ["RowFunction", "chunk_slices", "in_chunks", "jvp_in_chunks", "vjp_in_chunks"]
