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
docs/parallel.md for why). :func:`step_control` then compares a checksum
of the support across ranks and agrees on stopping (Ctrl-C, time budget) in one message.

Random draws come from CPU generators on every device (indices and init noise are drawn on
the CPU and the results moved), so a seed gives the same draws on CPU and GPU and on any
number of ranks.

One module per concern: :mod:`~rcig.parallel.devices` (device choice, moving state, the
CPU's float mode), :mod:`~rcig.parallel.team` (the Team, joining and leaving, each rank's
share of a batch), :mod:`~rcig.parallel.collectives` (the messages), and
:mod:`~rcig.parallel.launcher` (``--workers N``).
"""

from rcig.parallel.collectives import (Control, broadcast_bytes, broadcast_state, checksum, from_leader, gather_sum,
                                       leader_first, step_control, weighted_sum)
from rcig.parallel.devices import (DEVICES, MemoryAvailable, flushing_subnormals, memory_available, resolve_device,
                                   subnormals_flushed, to_device, with_subnormals_flushed, within_budget)
from rcig.parallel.launcher import launch
from rcig.parallel.team import TIMEOUT, Team, TeamError, join, launched, leave, rank_in_env, share, share_rows, solo

__all__ = ["Control", "DEVICES", "MemoryAvailable", "TIMEOUT", "Team", "TeamError", "broadcast_bytes", "broadcast_state", "checksum",
           "flushing_subnormals", "from_leader", "gather_sum", "join", "launch", "launched", "leader_first", "leave", "memory_available",
           "rank_in_env", "resolve_device", "share", "share_rows", "solo", "step_control", "subnormals_flushed",
           "to_device", "weighted_sum", "with_subnormals_flushed", "within_budget"]
