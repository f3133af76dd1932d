"""The team of ranks a run is part of: joining and leaving the process group, and each
rank's share of a batch."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import NamedTuple

import torch

from rcig.errors import RcigError
from rcig.parallel.devices import resolve_device

# A collective waits this long for a hung peer (a dead one is noticed at once: its socket
# closes). It must outlast what one rank may do alone between two collectives: a periodic
# evaluation network trained by one rank, or the leader writing a checkpoint.
TIMEOUT = timedelta(minutes=30)


class TeamError(RcigError):
    """An error every rank raises together (same message): only the leader reports it."""


class Team(NamedTuple):
    """This process's place in the run: ``rank`` of ``world``, on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def leader(self) -> bool:
        """Rank 0: the one that reads and writes files and prints."""
        return self.rank == 0

    @property
    def wire(self) -> torch.device:
        """Where collective buffers live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def solo(device: str | torch.device = "cpu") -> Team:
    """A team of one on ``device`` (no process group)."""
    return Team(0, 1, resolve_device(str(device)))


def rank_in_env() -> int:
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def launched() -> bool:
    """Whether torchrun started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str = "auto") -> Team:
    """This process's team: under torchrun, join the process group (gloo on CPU, nccl on
    CUDA; once per process); else a team of one."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if not launched():
        return Team(0, 1, where)
    if not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Team(dist.get_rank(), dist.get_world_size(), where)


def leave() -> None:
    """Leave the process group if this process joined one (at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------- splitting a batch

def share(n: int, team: Team) -> slice:
    """Rank ``team.rank``'s contiguous share of ``n`` rows: the first ``n % world`` ranks
    get ``n // world + 1`` rows, the others ``n // world``; together they cover 0..n-1."""
    if n < team.world:
        raise TeamError(f"cannot split {n} target images across {team.world} ranks; use fewer ranks "
                        "or a larger target_batch_size")
    base, extra = divmod(n, team.world)
    start = team.rank * base + min(team.rank, extra)
    return slice(start, start + base + (team.rank < extra))


def share_rows(rows: torch.Tensor | None, part: slice) -> torch.Tensor | None:
    """The entries of ``rows`` (indices into the whole batch) that fall in ``part``, as
    indices into the share; None (every row) stays None."""
    if rows is None:
        return None
    inside = rows[(rows >= part.start) & (rows < part.stop)]
    return inside - part.start
