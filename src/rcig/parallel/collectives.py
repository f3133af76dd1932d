"""The few messages the ranks of a team exchange. On a team of one each is the identity
and sends nothing."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any, Callable, NamedTuple

import torch

from rcig.errors import RcigError
from rcig.parallel.team import Team, TeamError


def weighted_sum(tensors: list[torch.Tensor], weight: float, team: Team) -> list[torch.Tensor]:
    """``sum_r weight_r * tensors_r`` over the ranks, in one all-reduce of one flat buffer
    (float32 of the tensors' total size); a team of one gets its tensors back unchanged."""
    if team.world == 1:
        return tensors
    import torch.distributed as dist

    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]).to(team.wire) * weight
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def gather_sum(values: torch.Tensor, team: Team) -> torch.Tensor:
    """The sum over ranks of a float64 CPU vector (each rank fills its own entries, zeros elsewhere)."""
    if team.world == 1:
        return values
    import torch.distributed as dist

    wire = values.to(team.wire)
    dist.all_reduce(wire)
    return wire.cpu()


# ------------------------------------------------------------- agreeing after each step

def checksum(tree: dict[str, torch.Tensor]) -> list[float]:
    """Two float64 sums per tensor (values and squares), in key order: equal on every rank
    while the ranks hold the same support."""
    out = []
    for key in sorted(tree):
        t = tree[key].detach().cpu().double()  # float64 on the CPU: every device gives the same sums
        out += [float(t.sum()), float((t * t).sum())]
    return out


class Control(NamedTuple):
    interrupted: bool
    out_of_time: bool


def step_control(team: Team, iteration: int, sums: list[float], interrupted: bool, out_of_time: bool) -> Control:
    """After each step: one all-gather of ``[interrupted, out_of_time, *sums]`` per rank.

    Stops every rank together when any rank was interrupted (Ctrl-C) or ran out of time,
    and raises an RcigError on every rank when the checksums ``sums`` differ (drift).
    """
    if team.world == 1:
        return Control(interrupted, out_of_time)
    import torch.distributed as dist

    mine = torch.tensor([float(interrupted), float(out_of_time), *sums], dtype=torch.float64, device=team.wire)
    gathered = [torch.empty_like(mine) for _ in range(team.world)]
    dist.all_gather(gathered, mine)
    rows = torch.stack(gathered).cpu()
    differ = [r for r in range(team.world) if not torch.equal(rows[r, 2:], rows[0, 2:])]
    if differ:
        raise TeamError(f"ranks drifted apart at iteration {iteration}: the support of rank(s) "
                        f"{', '.join(map(str, differ))} differs from rank 0's")
    return Control(bool(rows[:, 0].max()), bool(rows[:, 1].max()))


# ------------------------------------------------------------ what the leader read or did

def broadcast_bytes(data: bytes | None, team: Team) -> bytes:
    """The leader's ``data`` on every rank (the others pass None)."""
    if team.world == 1:
        return data
    import torch.distributed as dist

    size = torch.tensor([len(data) if team.leader else 0], dtype=torch.int64, device=team.wire)
    dist.broadcast(size, 0)
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(team.wire) if team.leader
              else torch.empty(int(size), dtype=torch.uint8, device=team.wire))
    dist.broadcast(buffer, 0)
    return data if team.leader else bytes(buffer.cpu().numpy())


def from_leader(fn: Callable[[], Any], team: Team) -> Any:
    """``fn()`` run on the leader alone (it reads files), its JSON-able result on every rank.

    An RcigError raised by ``fn`` is raised on every rank with the same message, so all
    ranks stop together with one clear line.
    """
    if team.world == 1:
        return fn()
    message = {}
    if team.leader:
        try:
            message = {"value": fn()}
        except RcigError as exc:
            message = {"error": str(exc)}
    message = json.loads(broadcast_bytes(json.dumps(message).encode() if team.leader else None, team))
    if "error" in message:
        raise TeamError(message["error"])
    return message["value"]


def broadcast_state(state: dict[str, Any] | None, team: Team) -> dict[str, Any]:
    """The leader's checkpoint-style state on every rank: torch.save'd on the leader, read
    back with ``weights_only=True`` (tensors and plain containers only) on the others."""
    if team.world == 1:
        return state
    data = None
    if team.leader:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    data = broadcast_bytes(data, team)
    return state if team.leader else torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


@contextlib.contextmanager
def leader_first(team: Team):
    """Run the block on the leader, then on the others (who then find its caches and downloads)."""
    import torch.distributed as dist

    if team.world > 1 and not team.leader:
        dist.barrier()
    yield
    if team.world > 1 and team.leader:
        dist.barrier()
