"""The RCIG outer loop, top to bottom: init, tune, then meta-steps with a model pool.

    support = seeded real images per class (random, or herded), centred one-hot labels, log_temp = 0
    networks  = the config's ConvNet, flax's init as the reference (rcig.models.init)
    inner_lr, hvp_lr = tuned on one fresh network (x1.2 after each trial, stop after
                       the first unstable one, then x0.7;
                       solver=adam only: CG has no learning rates)
    repeat `steps` times:
        theta0  = a random network of the pool
        X_t     = 1,024 real training images
        grad    = direct + implicit meta-gradient        (rcig.algorithm.meta; the inner
                  Adam's count starts at theta0's pool steps, as the reference's)
        support = AdaBelief step (x, y: lr x lr_multiplier: boost, anneal);  ema = EMA(support)
        theta0 += randint(1, 16) Adam steps of MSE to the support's labels
        every 50 steps: adapt inner_lr from how the inner solves went (solver=adam)
    save the EMA support

With ``cfg.aug`` set, the inner solves and the pool steps see freshly augmented support
rows, and ``aug_repeats`` augmented meta-gradients join the ``normal_repeats`` plain ones
in the average; with ``cfg.aug_per_pass`` an augmented pass holds one draw throughout and
plain passes are plain (:mod:`rcig.algorithm.meta`, :mod:`rcig.config`).

Everything random flows from one seeded generator (plus the pool's own), and everything
that changes is in :class:`RunState`, which a checkpoint stores whole: a run killed at any
point and resumed ends with the same support as an uninterrupted run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable

import torch

from rcig.algorithm.inner import (
    AdamSolver, BaseNetwork, HinvQuadratic, InnerLoss, Objective, base_network, make_solvers, tree_norm,
)
from rcig.algorithm.meta import (
    LEAVES, SOLO, Batch, BatchSplit, MetaResult, expand_support, meta_gradient, pass_direct, plain_pass,
    resolved_chunk_rows, row_draw, support_augmentation,
)
from rcig.algorithm.optim import EMA, AdaBelief, ModelPool, draw_pool_steps, support_loss
from rcig.config import Config
from rcig.data.sampling import centred_one_hot, herding_per_class, sample_per_class
from rcig.errors import RcigError
from rcig.timing import Stopwatch


# ------------------------------------------------------------------------- the support

def start_images(init: str, ipc: int) -> str:
    """The config's ``init`` with "auto" resolved: "herding" at 1 ipc, else "real", the
    start that scored higher at each size (BENCHMARKS.md)."""
    if init == "auto":
        return "herding" if ipc == 1 else "real"
    return init


def init_support(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, ipc: int,
                 init: str, generator: torch.Generator, seed: int = 0) -> dict[str, torch.Tensor]:
    """``ipc`` real images per class (class-ordered): seeded random ones ("real", drawn from
    ``generator``, the run's), or the herding baseline's of ``seed`` ("herding"); or 0.3 N(0, 1)
    noise in place of random real ones ("noise"); "auto": :func:`start_images`. Centred one-hot
    labels, ``log_temp = 0``."""
    init = start_images(init, ipc)
    if init == "herding":
        index = herding_per_class(x_train, y_train, num_classes, ipc, seed, device=x_train.device)
    else:
        index = sample_per_class(y_train, num_classes, ipc, generator)
    x = x_train[index].clone().float()
    if init == "noise":  # drawn on the CPU (the generator's device) so every device gets the same
        x = (0.3 * torch.randn(x.shape, generator=generator)).to(x.device)
    y = centred_one_hot(y_train[index], num_classes)
    return {"x": x, "y": y, "log_temp": torch.zeros((), device=x.device)}


# ---------------------------------------------------------------- learning-rate control

class Outcome(IntEnum):
    """How a solve went, by its recorded values (the reference's statistic; stored as ints)."""

    DIVERGED = -1  # the last value ended above the first
    NEITHER = 0  # fewer than two values, or not monotonic but not above the start
    MONOTONIC = 1  # the value fell at every step


def solve_outcome(values: list[float]) -> Outcome:
    """The :class:`Outcome` of a solve's recorded inner losses or H^-1 g residuals."""
    if len(values) < 2:
        return Outcome.NEITHER
    if all(a > b for a, b in zip(values[:-1], values[1:])):
        return Outcome.MONOTONIC
    return Outcome.DIVERGED if values[-1] > values[0] else Outcome.NEITHER


def adapt_lr(lr: float, outcomes: list[int]) -> float:
    """Every `lr_adapt_every` steps: x0.9 if >= 29% diverged, else x1.05 if >= 70% monotonic."""
    if not outcomes:
        return lr
    n = len(outcomes)
    if sum(o == Outcome.DIVERGED for o in outcomes) / n >= 0.29:
        return lr * 0.9
    if sum(o == Outcome.MONOTONIC for o in outcomes) / n >= 0.7:
        return lr * 1.05
    return lr


def grow_while_stable(lr: float, is_stable: Callable[[float], bool], max_trials: int = 200) -> float:
    """The reference release's rule, exactly: run a trial at lr, *then* multiply lr by 1.2,
    and leave after the first unstable trial; finally multiply by 0.7. The failing trial's
    rate is multiplied by 1.2 too, so the result is 1.2 x 0.7 = 0.84 x the first unstable
    rate ``lr * 1.2**k``, i.e. ``lr * 1.2**(k + 1) * 0.7``.

    Trials are costly (a full inner or H^-1 g solve each), so instead of stepping k = 0, 1,
    2, ... this gallops (k = 1, 2, 4, ...) to an unstable k and then bisects. Where stability
    is monotone in lr it returns exactly what the linear scan does, in O(log k) trials.
    """
    def stable(k: int) -> bool:
        return is_stable(lr * 1.2 ** k)

    if not stable(0):
        return lr * 1.2 * 0.7
    good, bad = 0, 1
    while bad < max_trials and stable(bad):
        good, bad = bad, bad * 2
    bad = min(bad, max_trials)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if stable(mid) else (good, mid)
    return lr * 1.2 ** (bad + 1) * 0.7


def tune_learning_rates(base: BaseNetwork, support: dict[str, torch.Tensor], target: Batch, cfg: Config,
                        on_trial: Callable[[float], None] | None = None) -> tuple[float, float]:
    """Tune the Adam solvers' inner and H^-1 g learning rates on one network and one target batch.

    A trial is one solve of the step's own pass (:func:`rcig.algorithm.meta.plain_pass`: the
    whole plain support); it is "stable" when the recorded values decrease at every step.
    The hvp trials share one inner solve and one g_t (they depend only on the tuned inner
    lr), so each costs only the support's H v products. ``on_trial(lr)`` is called before
    each trial (a progress display).
    """
    p = plain_pass(base, support, cfg)

    def stable(objective: Callable[[], Objective], steps: int) -> Callable[[float], bool]:
        def is_stable(lr: float) -> bool:
            if on_trial is not None:
                on_trial(lr)
            return solve_outcome(AdamSolver(lr, steps).solve(objective()).values) == Outcome.MONOTONIC
        return is_stable

    inner_lr = cfg.inner_lr or grow_while_stable(cfg.inner_lr_start, stable(lambda: InnerLoss(p.inner),
                                                                            cfg.n_inner_steps))
    if cfg.hvp_lr is not None:
        return inner_lr, cfg.hvp_lr
    delta = AdamSolver(inner_lr, cfg.n_inner_steps).solve(InnerLoss(p.inner)).x
    g_t = pass_direct(p, delta, target).g_t
    hvp_lr = grow_while_stable(cfg.hvp_lr_start, stable(lambda: HinvQuadratic(p.hinv, delta, g_t), cfg.n_hinv_steps))
    return inner_lr, hvp_lr


def lr_multiplier(iteration: int, boost: float = 1.0, boost_steps: int = 0, final: float = 1.0,
                  final_step: int = 0) -> float:
    """The support's learning-rate multiplier (of ``proto_lr``, for ``x`` and ``y``) at outer
    step ``iteration`` (0-based: the step numbered ``iteration + 1``): a cosine boost, then a
    cosine anneal. With t = ``iteration``, b = ``boost``, B = ``boost_steps``, f = ``final``,
    E = ``final_step``::

        m(t) = 1 + (b - 1) (1 + cos(pi t / B)) / 2                   t < B            (boost)
        m(t) = f + (1 - f) (1 + cos(pi (t - B) / (E - 1 - B))) / 2   B <= t < E - 1   (anneal)
        m(t) = f                                                     t >= max(B, E - 1)

    so m = b at the first step, halfway at t = B/2, 1 at t = B (the boost's end, where the
    anneal starts), (1 + f)/2 halfway through the anneal, and exactly f from step number E
    (t = E - 1) on: E is the last step of the anneal, which runs at f, as does every step
    after it. Off, m is exactly 1.0: the boost with b = 1 (any B), the anneal with f = 1
    (any E). The config asks B > 0 when b > 1 and E > B when f < 1.
    """
    if iteration < boost_steps:
        return 1.0 + (boost - 1.0) * 0.5 * (1.0 + math.cos(math.pi * iteration / boost_steps))
    if iteration >= final_step - 1:
        return final
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * (iteration - boost_steps)
                                                        / (final_step - 1 - boost_steps)))


def anneal(cfg: Config, anneal_end: int) -> tuple[float, int]:
    """The anneal's (final multiple f, last step E) for :func:`lr_multiplier`: the config's
    E, or, when it leaves E to the run (``proto_lr_final_step`` 0), the run's last step
    ``anneal_end`` once the driver has fixed it; until then no anneal (f = 1)."""
    end = cfg.proto_lr_final_step or anneal_end
    return (cfg.proto_lr_final, end) if end else (1.0, 0)


def anneals_to_the_end(cfg: Config) -> bool:
    """Whether the config anneals to the run's last step, which the driver must fix."""
    return cfg.proto_lr_final < 1 and cfg.proto_lr_final_step == 0


# ------------------------------------------------------------------------- run state

@dataclass
class RunState:
    """Everything that changes during a run; a checkpoint stores all of it."""

    iteration: int
    support: dict[str, torch.Tensor]
    optimiser: dict[str, Any]
    ema: dict[str, Any]
    pool: ModelPool
    inner_lr: float
    hvp_lr: float
    generator: torch.Generator
    inner_outcomes: list[Outcome] = field(default_factory=list)  # since the last lr adaptation
    anneal_end: int = 0  # the anneal's last step when the config leaves it to the run; 0: not fixed yet

    def to_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "support": self.support, "optimiser": self.optimiser,
                "ema": self.ema, "pool": self.pool.state_dict(), "inner_lr": self.inner_lr,
                "hvp_lr": self.hvp_lr, "generator": self.generator.get_state(),
                "inner_outcomes": [int(o) for o in self.inner_outcomes], "anneal_end": self.anneal_end}

    def load_dict(self, d: dict[str, Any], where: str = "checkpoint") -> None:
        self.iteration = int(d["iteration"])
        self.support, self.optimiser, self.ema = d["support"], d["optimiser"], d["ema"]
        self.pool.load_state_dict(d["pool"], where)
        self.inner_lr, self.hvp_lr = float(d["inner_lr"]), float(d["hvp_lr"])
        self.generator.set_state(d["generator"])
        self.inner_outcomes = [Outcome(o) for o in d["inner_outcomes"]]
        self.anneal_end = int(d["anneal_end"])


# ---------------------------------------------------------------------- the main loop

class Distiller:
    """Holds the fixed parts of a run (data, config, model factory) and steps a RunState.

    ``device`` (None: ``x_train``'s): where everything lives. ``split``: how the processes of
    the run share each step's target batch (:class:`rcig.algorithm.meta.BatchSplit`; the
    default is one process). Random draws stay on CPU generators; networks are initialised
    on the CPU and moved, so a seed gives the same run on every device.
    """

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, ipc: int,
                 cfg: Config, seed: int, make_model: Callable[[], torch.nn.Module],
                 device: torch.device | None = None, split: BatchSplit = SOLO):
        device = x_train.device if device is None else device
        self.split = split
        self.x_train, self.y_train = x_train.to(device), y_train.to(device)
        self.num_classes, self.ipc, self.cfg, self.seed = num_classes, ipc, cfg, seed
        self.make_model = lambda: make_model().to(device)
        self.model = self.make_model()  # a template: functional_call swaps its parameters
        self.adabelief = AdaBelief({"x": cfg.proto_lr, "y": cfg.proto_lr, "log_temp": cfg.temp_lr})
        self.ema = EMA(cfg.ema_decay)

    def new_state(self, blank: bool = False) -> RunState:
        """The state before step 1: the initial support (:func:`init_support`), fresh optimiser,
        EMA and pool. ``blank``: zeros of the support's shapes instead, a template to load a
        checkpoint into without paying for the init (herding embeds the whole training set)."""
        generator = torch.Generator().manual_seed(self.seed)
        if blank:
            x = self.x_train.new_zeros((self.num_classes * self.ipc, *self.x_train.shape[1:]), dtype=torch.float32)
            support = {"x": x, "y": x.new_zeros((len(x), self.num_classes)), "log_temp": x.new_zeros(())}
        else:
            support = init_support(self.x_train, self.y_train, self.num_classes, self.ipc, self.cfg.init, generator,
                                   self.seed)
        pool = ModelPool(self.make_model, self.cfg.pool_size, self.cfg.pool_lr, self.cfg.max_online_steps,
                         torch.Generator().manual_seed(self.seed + 1))
        return RunState(0, support, self.adabelief.init(support), self.ema.init(support), pool,
                        self.cfg.inner_lr or self.cfg.inner_lr_start, self.cfg.hvp_lr or self.cfg.hvp_lr_start,
                        generator)

    def target_batch(self, generator: torch.Generator) -> Batch:
        n = min(self.cfg.target_batch_size, len(self.x_train))
        index = torch.randperm(len(self.x_train), generator=generator)[:n].to(self.x_train.device)
        return Batch(self.x_train[index], self.y_train[index])

    def tune(self, state: RunState, on_trial: Callable[[float], None] | None = None) -> None:
        """Tune the learning rates on a fresh network (not one of the pool's); ``on_trial(lr)``
        before each trial (:func:`tune_learning_rates`)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 2)
            base = base_network(self.model, dict(self.make_model().named_parameters()))
        target = self.target_batch(torch.Generator().manual_seed(self.seed + 3))
        state.inner_lr, state.hvp_lr = tune_learning_rates(base, state.support, target, self.cfg, on_trial)

    def step(self, state: RunState) -> dict[str, Any]:
        """One outer iteration; advances ``state`` in place (its generator and pool as it goes,
        the support, optimiser, EMA, iteration and learning rates after the meta-gradient)."""
        cfg, clock = self.cfg, Stopwatch()  # the whole step (the log's seconds, cpu_seconds)
        index = state.pool.pick(state.generator)  # a pool network theta0
        base = base_network(self.model, state.pool.params(index))
        solvers = make_solvers(cfg, state.inner_lr, state.hvp_lr, state.pool.steps(index))
        # normal_repeats plain passes, then aug_repeats augmented ones, each on a fresh target
        # batch: inner solve, direct gradient, H^-1 g, implicit gradient, clip (meta_gradient);
        # the meta-gradient is their plain mean
        try:
            results = [meta_gradient(base, state.support, self.target_batch(state.generator), cfg, solvers,
                                     state.generator, augmented_pass, self.split)
                       for augmented_pass in [False] * cfg.normal_repeats + [True] * cfg.aug_repeats]
        except torch.linalg.LinAlgError as exc:  # phi phi^T + l2 I only fails to factor on inf/huge features
            raise RcigError(f"diverged at iteration {state.iteration + 1}: the inner problem's kernel matrix "
                            f"cannot be factored ({str(exc).splitlines()[0]})") from None
        result = results[0] if len(results) == 1 else average_results(results)
        check_finite(result, state.iteration + 1)

        lr_scale = lr_multiplier(state.iteration, cfg.proto_lr_boost, cfg.proto_lr_boost_steps,  # AdaBelief + EMA
                                 *anneal(cfg, state.anneal_end))
        support, optimiser = self.adabelief.step(state.support, result.grads, state.optimiser,
                                                 {"x": lr_scale, "y": lr_scale})
        if not cfg.learn_labels:
            support["y"] = state.support["y"]
        ema = self.ema.update(state.ema, support)

        pool_clock = Stopwatch()  # the pool network trains on the new support
        pool_steps = draw_pool_steps(state.generator, cfg.n_max_steps_pool)
        x_s, y_s = expand_support(support["x"].detach(), support["y"].detach(), cfg.flip)
        rows = row_draw(x_s, y_s, cfg.pool_train_batch_size, support_augmentation(cfg.aug, state.generator),
                        state.generator)
        state.pool.train(index, support_loss(self.model, rows, resolved_chunk_rows(cfg)), pool_steps)
        result.seconds["pool"] = pool_clock.total()["seconds"]

        state.inner_outcomes.append(solve_outcome(result.inner_losses))  # learning-rate adaptation
        state.iteration += 1
        state.support, state.optimiser, state.ema = support, optimiser, ema
        if state.iteration % cfg.lr_adapt_every == 0:
            if cfg.tunes_learning_rates:
                state.inner_lr = adapt_lr(state.inner_lr, state.inner_outcomes)
            state.inner_outcomes = []
        return log_record(state, result, index, pool_steps, clock.total(), cfg.proto_lr * lr_scale)


def average_results(results: list[MetaResult]) -> MetaResult:
    """The mean meta-gradient (and outer loss/accuracy) of several; solver traces of the first."""
    def mean(trees):
        return {k: torch.stack([t[k] for t in trees]).mean(0) for k in trees[0]}

    first, n = results[0], len(results)
    seconds = {k: sum(r.seconds[k] for r in results) for k in first.seconds}
    return MetaResult(mean([r.grads for r in results]), mean([r.direct for r in results]),
                      mean([r.implicit for r in results]), sum(r.outer_loss for r in results) / n,
                      sum(r.outer_acc for r in results) / n, first.inner_losses, first.residuals,
                      first.delta, seconds)


def check_finite(result: MetaResult, iteration: int) -> None:
    values = [torch.tensor(result.outer_loss)] + [g for g in result.grads.values()]
    if not all(torch.isfinite(v).all() for v in values):
        raise RcigError(f"diverged at iteration {iteration}: the outer loss or meta-gradient is not finite "
                        f"(outer loss {result.outer_loss})")


def log_record(state: RunState, r: MetaResult, index: int, pool_steps: int, cost: dict[str, float],
               proto_lr: float) -> dict[str, Any]:
    """One iteration's log line. ``cost`` (:meth:`rcig.timing.Stopwatch.total`): ``seconds``,
    the wall time of the step, and ``cpu_seconds``, the process's CPU time in it (all its
    threads; with several ranks, this rank's only), the fair measure on a shared machine."""
    norms = lambda tree: {k: float(tree[k].norm()) for k in LEAVES}  # noqa: E731
    return {
        "iter": state.iteration, "outer_loss": r.outer_loss, "outer_acc": r.outer_acc,
        "inner_loss_first": r.inner_losses[0] if r.inner_losses else None,
        "inner_loss_last": r.inner_losses[-1] if r.inner_losses else None,
        "residual_first": r.residuals[0] if r.residuals else None,
        "residual_last": r.residuals[-1] if r.residuals else None,
        "inner_lr": state.inner_lr, "hvp_lr": state.hvp_lr, "proto_lr": proto_lr,
        "grad_norm": norms(r.grads), "direct_norm": norms(r.direct), "implicit_norm": norms(r.implicit),
        "delta_norm": float(tree_norm(r.delta)), "log_temp": float(state.support["log_temp"]),
        "pool_model": index, "pool_steps": pool_steps, **cost, "parts": r.seconds,
    }


__all__ = ["Distiller", "Outcome", "RunState", "adapt_lr", "grow_while_stable", "init_support", "lr_multiplier",
           "solve_outcome", "start_images", "tune_learning_rates"]
