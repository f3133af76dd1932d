r"""Several processes and devices: the team of ranks a run is part of, and its few collectives.

A run launched by ``torchrun`` (or ``rcig ... --workers N``, which launches the same thing
through torch.distributed.run) is a *team* of ``world`` ranks; a plain run is a team of one,
for which every collective here is the identity and costs nothing. Backends: gloo on CPU,
nccl on CUDA. Under torchrun each rank takes its local GPU (``LOCAL_RANK``).

Data-parallel distillation (what each outer step does on ``world`` ranks)::

    X_t        = the step's m target images, drawn from the shared generator as on one rank
    X_t^(r)    = rank r's contiguous share of them, m_r rows            (share)
    L_r        = CE(X_t^(r)) - margin(y)       mean over its share
    sum_r (m_r / m) L_r = L_out exactly (the margin term once, since sum_r m_r / m = 1), so
    direct, g_t, loss, acc  <-  sum_r (m_r / m) (...)_r                   (weighted_sum)

and everything after that depends only on the support, delta* and the reduced g_t, which
are identical on every rank: v = H^-1 g_t, the implicit gradient, the clipping, the
AdaBelief step and the pool training run replicated (no messages; see
benchmarks/distributed.md for why, measured). :func:`step_control` then compares a checksum
of the support across ranks and agrees on stopping (Ctrl-C, time budget) in one message.

Random draws come from CPU generators on every device (indices and init noise are drawn on
the CPU and the results moved), so a seed gives the same draws on CPU and GPU and on any
number of ranks.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
from datetime import timedelta
from typing import Any, Callable, NamedTuple

import torch

from rcig.errors import RcigError

# A collective waits this long for a hung peer (a dead one is noticed at once: its socket
# closes). It must outlast what one rank may do alone between two collectives: a periodic
# evaluation network trained by one rank, or the leader writing a checkpoint.
TIMEOUT = timedelta(minutes=30)
DEVICES = "auto|cpu|cuda|cuda:K|mps"


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


def solo(device: str | torch.device = "cpu") -> Team:
    """A team of one on ``device`` (no process group)."""
    return Team(0, 1, resolve_device(str(device)))


# --------------------------------------------------------------------------- devices

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA GPU if torch sees one, else the CPU; ``cuda`` -> GPU
    ``local_rank``; ``cuda:K``, ``mps``, ``cpu`` as given. An unusable choice is an RcigError.

    ``auto`` does not pick Apple's ``mps``: the distillation's float64 checksums and some of
    its linear algebra are not supported there, so it is opt-in (and untested here).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise RcigError("--device mps: this torch sees no Apple GPU")
        return torch.device("mps")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise RcigError(f"--device {name}: this torch sees no CUDA GPU (torch {torch.__version__})")
        k = int(index) if index else local_rank
        if k >= torch.cuda.device_count():
            raise RcigError(f"--device {name}: GPU {k} does not exist ({torch.cuda.device_count()} visible)")
        return torch.device("cuda", k)
    raise RcigError(f"unknown device '{name}'; choose {DEVICES}")


def flushing_subnormals() -> bool:
    """Whether this CPU thread treats subnormal floats as zero (probed: 1e-30 * 1e-10)."""
    return bool((torch.full((1,), 1e-30) * 1e-10).item() == 0)


@contextlib.contextmanager
def subnormals_flushed():
    """Treat subnormal floats (|x| < 1.2e-38 in float32) as zero inside the block (the FTZ
    and DAZ bits of this thread and of the threads it starts), then restore the caller's mode.

    Why: the distillation network's softplus(beta z) / beta with beta = 60 returns
    exp(beta z) / beta for z < -1.45, which is subnormal for z in about [-1.72, -1.45], and
    the JVPs and backward passes then multiply by those values. Subnormal arithmetic takes
    a slow path on x86: with the reference init (pre-activations of unit scale) a 1 ipc
    Fashion-MNIST outer step spent 110 CPU s instead of 37 (BENCHMARKS.md, session 7). The
    values flushed are 1e31 times smaller than anything they are added to, so results
    change only in the last bits (the oracle tests run in float64, whose subnormals start
    at 2.2e-308). The mode is per thread and new threads inherit it (POSIX), so the command
    line enters this block before torch starts its thread pool; a library caller whose pool
    already runs gets it on the calling thread only. The calling thread's mode comes back on
    exit (a process left flushing is what ``-ffast-math`` is blamed for); threads started
    inside the block keep flushing.
    """
    was = flushing_subnormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was:
            torch.set_flush_denormal(False)


def with_subnormals_flushed(fn: Callable) -> Callable:
    """``fn`` run inside :func:`subnormals_flushed` (same signature and docstring)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with subnormals_flushed():
            return fn(*args, **kwargs)
    return wrapper


# ------------------------------------------------------------------ joining and leaving

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


def _wire(team: Team) -> torch.device:
    """Where collective buffers live: the GPU for nccl, the CPU for gloo."""
    return team.device if team.device.type == "cuda" else torch.device("cpu")


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


# --------------------------------------------------------------------- the collectives

def weighted_sum(tensors: list[torch.Tensor], weight: float, team: Team) -> list[torch.Tensor]:
    """``sum_r weight_r * tensors_r`` over the ranks, in one all-reduce of one flat buffer
    (float32 of the tensors' total size); a team of one gets its tensors back unchanged."""
    if team.world == 1:
        return tensors
    import torch.distributed as dist

    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors]).to(_wire(team)) * weight
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()].view(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


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

    mine = torch.tensor([float(interrupted), float(out_of_time), *sums], dtype=torch.float64, device=_wire(team))
    gathered = [torch.empty_like(mine) for _ in range(team.world)]
    dist.all_gather(gathered, mine)
    rows = torch.stack(gathered).cpu()
    differ = [r for r in range(team.world) if not torch.equal(rows[r, 2:], rows[0, 2:])]
    if differ:
        raise TeamError(f"ranks drifted apart at iteration {iteration}: the support of rank(s) "
                        f"{', '.join(map(str, differ))} differs from rank 0's")
    return Control(bool(rows[:, 0].max()), bool(rows[:, 1].max()))


def broadcast_bytes(data: bytes | None, team: Team) -> bytes:
    """The leader's ``data`` on every rank (the others pass None)."""
    if team.world == 1:
        return data
    import torch.distributed as dist

    size = torch.tensor([len(data) if team.leader else 0], dtype=torch.int64, device=_wire(team))
    dist.broadcast(size, 0)
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_wire(team)) if team.leader
              else torch.empty(int(size), dtype=torch.uint8, device=_wire(team)))
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


def gather_sum(values: torch.Tensor, team: Team) -> torch.Tensor:
    """The sum over ranks of a float64 CPU vector (each rank fills its own entries, zeros elsewhere)."""
    if team.world == 1:
        return values
    import torch.distributed as dist

    wire = values.to(_wire(team))
    dist.all_reduce(wire)
    return wire.cpu()


@contextlib.contextmanager
def leader_first(team: Team):
    """Run the block on the leader, then on the others (who then find its caches and downloads)."""
    import torch.distributed as dist

    if team.world > 1 and not team.leader:
        dist.barrier()
    yield
    if team.world > 1 and team.leader:
        dist.barrier()


# ------------------------------------------------------------------- devices for trees

def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` (nested dicts/lists of tensors) with every floating tensor moved to ``device``.

    Integer and byte tensors (generator states, counts) stay where they are: a
    ``torch.Generator``'s state must be a CPU ByteTensor.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


# -------------------------------------------------------------------- the launcher

def launch(argv: list[str], workers: int) -> int:
    """``torchrun --standalone --nproc-per-node=workers -m rcig argv``, in this process, via
    torch.distributed.run; each rank gets ``OMP_NUM_THREADS = cores // workers`` unless it
    is set. Returns the exit status (the highest of the ranks' own)."""
    import logging

    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    for name in list(logging.root.manager.loggerDict):  # what matters is said below, in one line
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={workers}", "-m", "rcig", *argv]))
    except SignalException as exc:  # Ctrl-C: the ranks got it too, and stopped cleanly
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        first = min(exc.failures.values(), key=lambda f: f.timestamp)  # the others were stopped after it
        if first.exitcode > 0:  # the rank reported its own error (exit status 2: bad input)
            return first.exitcode
        print(f"rcig: error: rank {first.local_rank} of {workers} was killed by signal {-first.exitcode}; "
              "the others were stopped (a distillation's last checkpoint stands)", file=sys.stderr)
        return 128 - first.exitcode
    return 0


__all__ = ["Control", "DEVICES", "TIMEOUT", "Team", "TeamError", "broadcast_bytes", "broadcast_state", "checksum",
           "from_leader", "gather_sum", "join", "launch", "launched", "leader_first", "leave", "rank_in_env", "resolve_device",
           "share", "share_rows", "solo", "step_control", "to_device", "weighted_sum"]
