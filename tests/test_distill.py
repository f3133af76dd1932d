"""The RCIG outer loop on the embedded digits set: learning, the log, divergence, each knob.
(Exact resume is test_resume's.)"""

import json

import pytest
import torch

from conftest import TINY
import rcig.algorithm.outer as outer_module
from rcig.algorithm.outer import Outcome, adapt_lr, grow_while_stable, solve_outcome
from rcig.config import SOLVERS, Config
from rcig.errors import RcigError
from rcig.run.checkpoint import load_checkpoint
from rcig.run.driver import distill


def test_solve_outcome_and_adaptation_rules():
    assert solve_outcome([3.0, 2.0, 1.0]) is Outcome.MONOTONIC
    assert solve_outcome([3.0, 2.0, 2.5, 3.5]) is Outcome.DIVERGED  # ended above where it started
    assert solve_outcome([3.0, 2.0, 2.5, 1.0]) is Outcome.NEITHER
    assert solve_outcome([1.0]) is Outcome.NEITHER
    assert [int(o) for o in Outcome] == [-1, 0, 1]  # the values checkpoints store
    assert adapt_lr(1.0, [-1] * 3 + [1] * 7) == pytest.approx(0.9)
    assert adapt_lr(1.0, [1] * 7 + [0] * 3) == pytest.approx(1.05)
    assert adapt_lr(1.0, [1] * 6 + [0] * 4) == 1.0
    # the reference's loop: trial, then x1.2, leave after the first unstable trial, then
    # x0.7 (so 0.84 x the first unstable rate); the galloping search must agree with it
    def linear_scan(lr, is_stable):
        while True:
            stable = is_stable(lr)
            lr *= 1.2
            if not stable:
                return lr * 0.7

    for threshold in (0.5, 1.0, 2.0, 7.3, 1e3, 5e4):
        calls = []

        def stable(lr, threshold=threshold):
            calls.append(lr)
            return lr < threshold * (1 - 1e-9)

        expected = linear_scan(1.0, stable)
        calls.clear()
        assert grow_while_stable(1.0, stable) == pytest.approx(expected)
    assert len(calls) < 20  # the linear scan needs 61 trials for 5e4
    # first unstable rate 1.2**3: the result is 0.84 of it (not 0.7 of it)
    assert grow_while_stable(1.0, lambda lr: lr < 1.5) == pytest.approx(1.2 ** 3 * 0.84)
    assert grow_while_stable(1.0, lambda lr: False) == pytest.approx(0.84)


def test_refuses_to_overwrite_or_resume_a_different_run(tmp_path):
    distill("digits", 1, steps=1, out=tmp_path, overrides=TINY, progress=False)
    with pytest.raises(RcigError, match="already holds a run"):
        distill("digits", 1, steps=1, out=tmp_path, overrides=TINY, progress=False)
    with pytest.raises(RcigError, match="differs in ipc"):
        distill("digits", 2, out=tmp_path, resume=True, progress=False)
    with pytest.raises(RcigError, match="nothing to resume"):
        distill(out=tmp_path / "empty", resume=True, progress=False)


def test_test_width_is_the_width_the_set_is_scored_on(tmp_path):
    narrow = distill("digits", 1, steps=1, overrides={**TINY, "test_width": 16}, progress=False)
    assert narrow.meta["protocol"]["width"] == 16 and narrow.meta["config"]["width"] == TINY["width"]
    assert distill("digits", 1, steps=1, overrides=TINY, progress=False).meta["protocol"]["width"] == TINY["width"]


def test_log_records_cpu_seconds_of_each_step_and_of_the_tuning(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"iter": 1, "outer_loss": 9.0, "cpu_seconds": 99.0}\n')  # a dead run's
    distill("digits", 1, steps=2, out=out, overrides={**TINY, "inner_lr": None, "hvp_lr": None}, progress=False)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2]  # a fresh run's log is its own
    tuning = log[0]["tuning"]
    assert tuning["cpu_seconds"] > 0 and tuning["seconds"] > 0 and tuning["inner_lr"] == log[1]["inner_lr"]
    assert all(0 < r["cpu_seconds"] < 99 for r in log[1:])
    for r in log[1:]:  # each step's timed parts, the pool's included, fit inside the step
        assert set(r["parts"]) == {"inner_solve", "direct", "hinv", "implicit", "pool"}
        assert all(v >= 0 for v in r["parts"].values()) and sum(r["parts"].values()) <= r["seconds"] + 0.01
    distill(out=out, steps=3, resume=True, progress=False)  # a resumed run tunes nothing
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2, 3] and "tuning" not in log[-1]


def test_divergence_stops_with_clear_error_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real_meta = outer_module.meta_gradient
    calls = {"n": 0}

    def exploding_meta(*args, **kwargs):
        calls["n"] += 1
        result = real_meta(*args, **kwargs)
        if calls["n"] == 3:
            result.grads["x"] = result.grads["x"] * float("nan")
        return result

    monkeypatch.setattr(outer_module, "meta_gradient", exploding_meta)
    with pytest.raises(RcigError, match="diverged at iteration 3"):
        distill("digits", 1, steps=5, out=tmp_path, overrides=TINY, checkpoint_every=1, progress=False)
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["iteration"] == 2
    assert torch.isfinite(state["support"]["x"]).all()


def test_a_kernel_matrix_that_cannot_be_factored_is_a_divergence(tmp_path, monkeypatch):
    """Huge features make phi phi^T + l2 I fail Cholesky: a one-line divergence, not an internal error."""
    real_meta = outer_module.meta_gradient
    calls = {"n": 0}

    def blown_up_support(base, support, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            support = {**support, "x": support["x"] * 1e30}
        return real_meta(base, support, *args, **kwargs)

    monkeypatch.setattr(outer_module, "meta_gradient", blown_up_support)
    with pytest.raises(RcigError, match=r"diverged at iteration 2: the inner problem's kernel matrix") as info:
        distill("digits", 1, steps=4, out=tmp_path, overrides=TINY, checkpoint_every=1, progress=False)
    assert "\n" not in str(info.value)
    assert load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["iteration"] == 1


@pytest.mark.slow
def test_short_distillation_learns():
    """(g) A short run on digits lowers the outer loss and beats its own initialisation."""
    from rcig.algorithm.outer import init_support
    from rcig.data.sampling import centred_one_hot
    from rcig.data import prepare
    from rcig.evaluation import ProtocolSettings, evaluate_support

    overrides = {"width": 32, "pool_size": 5, "target_batch_size": 256, "max_online_steps": 30}
    prepared = prepare("digits")
    result = distill("digits", 1, steps=40, seed=0, overrides=overrides, progress=False)
    init = init_support(prepared.x_train, prepared.y_train, 10, 1, "real", torch.Generator().manual_seed(0))
    assert not torch.equal(result.images, init["x"])

    settings = ProtocolSettings(depth=3, width=32, n_models=2, steps=300, warmup=50, no_aug_extension=1.0,
                                augmentations=("translate",))
    before = evaluate_support(init["x"], centred_one_hot(prepared.y_train[:0].new_tensor(list(range(10))), 10),
                              prepared.test_images(), prepared.y_test, settings, progress=False)
    after = evaluate_support(result.images, result.labels, prepared.test_images(), prepared.y_test, settings,
                             progress=False)
    assert after["no_aug"]["mean"] > before["no_aug"]["mean"] + 0.05


def test_herding_init_starts_from_the_herding_baseline_of_the_runs_seed():
    """init="herding": the support before any step is the herding baseline's set of the same
    seed (images and labels), not the random-real start."""
    from rcig.algorithm.outer import init_support
    from rcig.data import prepare
    from rcig.evaluation import herding

    prepared = prepare("digits")
    start = init_support(prepared.x_train, prepared.y_train, 10, 2, "herding", torch.Generator().manual_seed(0), 3)
    images, labels = herding(prepared, 2, seed=3)
    assert torch.equal(start["x"], images) and torch.equal(start["y"], labels)
    assert not torch.equal(start["x"], herding(prepared, 2, seed=4)[0])  # the seed reaches the embedding
    real = init_support(prepared.x_train, prepared.y_train, 10, 2, "real", torch.Generator().manual_seed(0), 3)
    assert not torch.equal(start["x"], real["x"])
    # "auto": herding at 1 ipc, random real images from 2 ipc on
    auto = {ipc: init_support(prepared.x_train, prepared.y_train, 10, ipc, "auto", torch.Generator().manual_seed(0), 3)
            for ipc in (1, 2)}
    assert torch.equal(auto[1]["x"], herding(prepared, 1, seed=3)[0]) and torch.equal(auto[2]["x"], real["x"])


def test_herding_init_is_logged_and_not_recomputed_on_resume(tmp_path, monkeypatch):
    """The herding pass is made once per run (an iteration-0 "init" record holds its cost); a
    resume loads the checkpoint into a blank state and does not embed the training set again."""
    overrides = {"width": 8, "pool_size": 2, "target_batch_size": 64, "init": "herding",
                 "inner_lr": 3e-3, "hvp_lr": 3e-3}
    calls = []
    real = outer_module.init_support
    monkeypatch.setattr(outer_module, "init_support", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    first = distill("digits", 2, steps=1, seed=3, out=tmp_path, overrides=overrides, checkpoint_every=1,
                    progress=False)
    assert calls == ["herding"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["iter"] == 0 and records[0]["init"]["method"] == "herding"
    assert records[0]["init"]["cpu_seconds"] > 0
    resumed = distill(out=tmp_path, steps=2, resume=True, progress=False)
    assert calls == ["herding"] and resumed.meta["iteration"] == 2
    assert not torch.equal(resumed.images, first.images)


def tiny_network():
    """``(f, body0)`` of a seeded width-4 softplus ConvNet on 8x8 gray images, 3 classes."""
    from rcig.algorithm.inner import network, split_params
    from rcig.models import build_model

    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=3, image_size=8, width=4, activation="softplus")
    body0, head0 = split_params({k: v.detach() for k, v in model.named_parameters()})
    return network(model, head0), body0


LARGE_SUPPORT_KNOBS = {"direct_batch_sizes": [4, 32], "max_forward_batch_size": 16, "implicit_batch_size": 5,
                       "hinv_batch_size": 6, "inner_train_batch_size": 7, "pool_train_batch_size": 8}


@pytest.mark.parametrize("extra", [{"linearize": False}, {"solver": "cg"}, LARGE_SUPPORT_KNOBS, {"normal_repeats": 2},
                                   {"norm": "batch"}, {"norm": "instance"},
                                   {**LARGE_SUPPORT_KNOBS, "linearize": False},
                                   {"aug": ["crop", "rotate", "translate", "cutout"], "aug_repeats": 1}])
def test_variants_run_and_are_reproducible(extra):
    runs = [distill("digits", 2, steps=2, overrides={**TINY, **extra}, progress=False) for _ in range(2)]
    assert torch.isfinite(runs[0].images).all() and torch.isfinite(runs[0].labels).all()
    assert torch.equal(runs[0].images, runs[1].images)  # every random draw comes from the seed


def test_row_sampled_inner_problem_is_the_subset_problem():
    from rcig.algorithm.inner import inner_problem
    from rcig.algorithm.meta import RowSampledInner, row_draw

    f, body0 = tiny_network()
    x_s, y_s = torch.randn(6, 1, 8, 8), torch.eye(3).repeat(2, 1) - 1 / 3
    delta = {k: 1e-2 * torch.randn_like(v) for k, v in body0.items()}
    sampled = RowSampledInner(body0, lambda x, y: inner_problem(f, body0, x, y, 0.1, True, one_shot=True),
                              row_draw(x_s, y_s, 4, None, torch.Generator().manual_seed(5)))
    rows = torch.randperm(6, generator=torch.Generator().manual_seed(5))[:4]
    subset = inner_problem(f, body0, x_s[rows], y_s[rows], 0.1, True)
    loss, grad = sampled.loss_and_grad(delta)
    want_loss, want_grad = subset.loss_and_grad(delta)
    assert loss == pytest.approx(want_loss)
    for k in grad:
        torch.testing.assert_close(grad[k], want_grad[k])
    full_loss, _ = inner_problem(f, body0, x_s, y_s, 0.1, True).loss_and_grad(delta)
    assert loss != pytest.approx(full_loss)


def test_subsampled_implicit_gradient_only_moves_selected_rows():
    from rcig.algorithm.inner import BaseNetwork
    from rcig.algorithm.meta import GradSettings, implicit_gradient

    f, body0 = tiny_network()
    support = {"x": torch.randn(6, 1, 8, 8), "y": torch.eye(3).repeat(2, 1) - 1 / 3, "log_temp": torch.tensor(0.0)}
    delta = {k: 1e-2 * torch.randn_like(v) for k, v in body0.items()}
    v = {k: 1e-2 * torch.randn_like(t) for k, t in body0.items()}
    for linearize in (True, False):
        opts = dict(l2=0.1, flip=False, linearize=linearize, learn_labels=True)
        full = implicit_gradient(BaseNetwork(f, body0), support, delta, v, GradSettings(**opts))
        same = implicit_gradient(BaseNetwork(f, body0), support, delta, v, GradSettings(**opts), rows=torch.randperm(6))
        torch.testing.assert_close(same["x"], full["x"], rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(same["y"], full["y"], rtol=1e-4, atol=1e-8)
        part = implicit_gradient(BaseNetwork(f, body0), support, delta, v, GradSettings(**opts, chunk=3),
                                 rows=torch.tensor([1, 4]))
        assert part["x"][[0, 2, 3, 5]].abs().max() == 0 and part["x"][[1, 4]].abs().max() > 0
        torch.testing.assert_close(part["y"], full["y"], rtol=1e-4, atol=1e-8)  # labels: every row


def test_subsampled_direct_gradient_only_moves_selected_rows():
    from rcig.algorithm.inner import BaseNetwork
    from rcig.algorithm.meta import Batch, DirectRows, GradSettings, direct_gradient

    f, body0 = tiny_network()
    support = {"x": torch.randn(6, 1, 8, 8), "y": torch.eye(3).repeat(2, 1) - 1 / 3, "log_temp": torch.tensor(0.0)}
    delta = {k: 1e-2 * torch.randn_like(v) for k, v in body0.items()}
    x_t, y_t = torch.randn(12, 1, 8, 8), torch.arange(12) % 3
    opts = dict(l2=0.1, flip=False, linearize=True, learn_labels=True)
    base, target = BaseNetwork(f, body0), Batch(x_t, y_t)
    full = direct_gradient(base, support, delta, target, GradSettings(**opts))
    # every row selected, in another order: the same loss and gradients
    same = direct_gradient(base, support, delta, target, GradSettings(**opts),
                           DirectRows(torch.randperm(6), torch.randperm(12)))
    assert same.loss == pytest.approx(full.loss, rel=1e-5)
    torch.testing.assert_close(same.grads["x"], full.grads["x"], rtol=1e-4, atol=1e-7)
    # a subset: unselected support rows get no image gradient, the loss is unchanged
    part = direct_gradient(base, support, delta, target, GradSettings(**opts, chunk=3),
                           DirectRows(torch.tensor([0, 2]), torch.arange(5)))
    assert part.loss == pytest.approx(full.loss, rel=1e-5)
    assert part.grads["x"][[1, 3, 4, 5]].abs().max() == 0 and part.grads["x"][[0, 2]].abs().max() > 0


@pytest.mark.parametrize("over_batch", [True, False])
def test_plain_norms_equal_torch_norms_in_training_mode(over_batch):
    from rcig.models import PlainNorm

    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    ref = torch.nn.BatchNorm2d(3) if over_batch else torch.nn.GroupNorm(3, 3)
    plain = PlainNorm(3, over_batch)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(3))
        ref.bias.copy_(torch.randn(3))
        plain.load_state_dict({"weight": ref.weight, "bias": ref.bias})
    torch.testing.assert_close(plain(x), ref.train()(x), rtol=1e-5, atol=1e-5)


def test_inner_adam_starts_at_the_base_networks_pool_step_count():
    """The reference's inner solve keeps the pool network's Adam count: from count k with zero
    moments, the first step on a constant gradient is lr (1-b1)/(1-b1^(k+1)) / sqrt((1-b2)/(1-b2^(k+1)))
    per element, 0.709 lr for k = 50 (a fresh Adam's first step is lr)."""
    from rcig.algorithm.inner import AdamSolver, InnerLoss

    class Linear:  # L(delta) = <g, delta>: a constant gradient
        body0 = {"w": torch.zeros(5)}

        def loss_and_grad(self, delta):
            return float(delta["w"].sum()), {"w": torch.ones(5)}

    fresh = AdamSolver(0.1, 1).solve(InnerLoss(Linear())).x["w"]
    old = AdamSolver(0.1, 1, start_count=50).solve(InnerLoss(Linear())).x["w"]
    torch.testing.assert_close(fresh, torch.full((5,), -0.1))
    k, b1, b2 = 50, 0.9, 0.999
    ratio = (1 - b1) / (1 - b1 ** (k + 1)) / ((1 - b2) / (1 - b2 ** (k + 1))) ** 0.5
    assert ratio == pytest.approx(0.709, abs=1e-3)
    torch.testing.assert_close(old, torch.full((5,), -0.1 * ratio))


def test_outer_step_passes_the_pool_networks_step_count_to_the_inner_solve(monkeypatch):
    import rcig.algorithm.outer as outer

    real, seen = outer.meta_gradient, []

    def spy(base, support, target, cfg, solvers, *args):
        seen.append(solvers.inner.start_count)
        return real(base, support, target, cfg, solvers, *args)

    monkeypatch.setattr(outer, "meta_gradient", spy)
    distill("digits", 1, steps=6, overrides={**TINY, "max_online_steps": 100}, progress=False)
    assert seen[0] == 0 and max(seen) > 0  # 3 networks, 6 steps: some network is picked twice


def test_shares_of_the_target_batch_summed_over_processes_give_the_whole_batchs_meta_gradient():
    """Two processes each take an uneven share of the target batch, and the BatchSplit's
    reduce sums weight * (loss, accuracy, direct gradient, g_t) over them: every process ends
    with the meta-gradient of one process on the whole batch. The processes are played one
    after the other: a first run of each records what it sends, a second sums the two."""
    from rcig.algorithm.inner import BaseNetwork, make_solvers
    from rcig.algorithm.meta import Batch, BatchSplit, meta_gradient
    from rcig.config import Config

    f, body0 = tiny_network()
    g = torch.Generator().manual_seed(1)
    support = {"x": torch.randn(6, 1, 8, 8, generator=g), "y": torch.eye(3).repeat(2, 1) - 1 / 3,
               "log_temp": torch.tensor(0.2)}
    target = Batch(torch.randn(11, 1, 8, 8, generator=g), torch.arange(11) % 3)
    cfg = Config(n_inner_steps=3, n_hinv_steps=3)
    shares = [slice(0, 6), slice(6, 11)]

    def run(rank, reduce):
        split = BatchSplit(share=lambda n: shares[rank], reduce=reduce)
        return meta_gradient(BaseNetwork(f, body0), support, target, cfg, make_solvers(cfg, 3e-3, 3e-3, 0),
                             split=split)

    class Sent(Exception):
        pass

    sent = [None, None]
    for rank in (0, 1):
        def record(tensors, weight, rank=rank):
            sent[rank] = [weight * t for t in tensors]
            raise Sent
        with pytest.raises(Sent):
            run(rank, record)
    whole = meta_gradient(BaseNetwork(f, body0), support, target, cfg, make_solvers(cfg, 3e-3, 3e-3, 0))
    for rank in (0, 1):
        result = run(rank, lambda tensors, weight: [a + b for a, b in zip(*sent)])
        assert result.outer_loss == pytest.approx(whole.outer_loss, rel=1e-5)
        assert result.outer_acc == pytest.approx(whole.outer_acc, abs=1e-6)
        for k in ("x", "y", "log_temp"):
            torch.testing.assert_close(result.direct[k], whole.direct[k], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(result.implicit[k], whole.implicit[k], rtol=1e-3, atol=1e-6)


# ------------------------------------------------- each knob acts where it says it does

def knob_setup(overrides: dict):
    """A Distiller on digits at 2 ipc with ``{**TINY, **overrides}``, its state before step
    1, a pass of it, and one step's meta-gradient (the step's other parts recorded)."""
    from rcig.algorithm import outer
    from rcig.algorithm.inner import base_network, make_solvers
    from rcig.algorithm.meta import new_pass
    from rcig.config import from_dict
    from rcig.data import prepare
    from rcig.models import distillation_network

    cfg = from_dict({**TINY, **overrides})
    prepared = prepare("digits")
    distiller = outer.Distiller(prepared.x_train, prepared.y_train, 10, 2, cfg, 0,
                                distillation_network(cfg, in_channels=1, num_classes=10, image_size=8))
    state = distiller.new_state()
    base = base_network(distiller.model, state.pool.params(0))
    a_pass = new_pass(base, state.support, cfg, torch.Generator().manual_seed(0), False)
    seen = {}
    real_meta, real_loss = outer.meta_gradient, outer.support_loss

    def meta_gradient(*args, **kwargs):
        seen["result"] = real_meta(*args, **kwargs)
        return seen["result"]

    def support_loss(model, draw, *rest):
        seen["pool_rows"] = len(draw()[0])
        return real_loss(model, draw, *rest)

    outer.meta_gradient, outer.support_loss = meta_gradient, support_loss
    try:
        distiller.step(state)
    finally:
        outer.meta_gradient, outer.support_loss = real_meta, real_loss
    solvers = make_solvers(cfg, cfg.inner_lr, cfg.hvp_lr, 0)
    return distiller, a_pass, solvers, seen


@pytest.mark.parametrize("name", SOLVERS)
def test_every_solver_the_config_names_is_built_and_takes_learning_rates_as_the_config_says(name):
    """rcig.config.SOLVERS (the solver names a config accepts and whether each tunes learning
    rates) agrees with make_solvers: each name gives both solves a solver, and the learning
    rates change those solvers exactly when the config tunes them."""
    from rcig.algorithm.inner import Solvers, make_solvers

    cfg = Config(solver=name)
    slow, fast = make_solvers(cfg, 1e-3, 1e-2, 0), make_solvers(cfg, 2e-3, 2e-2, 0)
    assert isinstance(slow, Solvers) and all(callable(getattr(s, "solve", None)) for s in slow)
    assert (slow.inner != fast.inner and slow.hinv != fast.hinv) == cfg.tunes_learning_rates
    assert (slow.inner == fast.inner and slow.hinv == fast.hinv) == (not cfg.tunes_learning_rates)


def rows_with_gradient(grad: torch.Tensor) -> int:
    return int((grad.flatten(1).abs().sum(1) > 0).sum())


def kernel_bound_ratio(model: torch.nn.Module) -> float:
    """max |w| * sqrt(fan_in) over the conv and dense kernels: <= 1 under torch's default
    (uniform in +-1/sqrt(fan_in)), up to 2.27 under the reference's truncated lecun_normal."""
    kernels = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return max(float(w.detach().abs().max()) * w[0].numel() ** 0.5 for w in kernels)


def test_the_plain_setup_is_the_reference_every_knob_is_compared_with():
    distiller, a_pass, solvers, seen = knob_setup({})
    n = a_pass.n_rows
    assert type(a_pass.inner).__name__ == type(a_pass.hinv).__name__ == "LinearizedInner"
    assert type(solvers.inner).__name__ == "AdamSolver"
    assert rows_with_gradient(seen["result"].direct["x"]) == rows_with_gradient(seen["result"].implicit["x"]) == n
    assert seen["pool_rows"] == n == 20
    assert kernel_bound_ratio(distiller.model) > 1.5
    assert not any(type(m).__name__ == "PlainNorm" for m in distiller.model.modules())


@pytest.mark.parametrize("overrides, acts", [
    # the inner problem is the network itself, not its linearisation
    ({"linearize": False}, lambda d, p, s, seen: type(p.inner).__name__ == type(p.hinv).__name__ == "NonlinearInner"),
    # both solves run conjugate gradients, whose inner loss never rises on the convex problem
    ({"solver": "cg"}, lambda d, p, s, seen: type(s.inner).__name__ == type(s.hinv).__name__ == "CGSolver"
     and all(b <= a + 1e-6 for a, b in zip(seen["result"].inner_losses, seen["result"].inner_losses[1:]))),
    # the networks normalise over (batch, height, width) / (height, width)
    ({"norm": "batch"}, lambda d, p, s, seen: [m.dims for m in d.model.modules() if type(m).__name__ == "PlainNorm"]
     == [(0, 2, 3)] * 3),
    ({"norm": "instance"}, lambda d, p, s, seen: [m.dims for m in d.model.modules() if type(m).__name__ == "PlainNorm"]
     == [(2, 3)] * 3),
    # torch's kernels lie within +-1/sqrt(fan_in)
    ({"network_init": "torch"}, lambda d, p, s, seen: kernel_bound_ratio(d.model) <= 1.0),
    # 4 support rows get the direct gradient, 5 the implicit one
    ({"direct_batch_sizes": [4, 32]}, lambda d, p, s, seen: rows_with_gradient(seen["result"].direct["x"]) == 4),
    ({"implicit_batch_size": 5}, lambda d, p, s, seen: 1 <= rows_with_gradient(seen["result"].implicit["x"]) <= 5),
    # each H v of the H^-1 g solve sees 6 random rows, each inner step 7, each pool step 8
    ({"hinv_batch_size": 6}, lambda d, p, s, seen: len(p.hinv.draw()[0]) == 6
     and type(p.inner).__name__ == "LinearizedInner"),
    ({"inner_train_batch_size": 7}, lambda d, p, s, seen: len(p.inner.draw()[0]) == 7),
    ({"pool_train_batch_size": 8}, lambda d, p, s, seen: seen["pool_rows"] == 8),
], ids=["linearize", "cg", "batch_norm", "instance_norm", "torch_init", "direct_rows", "implicit_rows", "hinv_rows",
        "inner_rows", "pool_rows"])
def test_each_knob_acts_where_it_says(overrides, acts):
    """A knob that silently did nothing would fail here for its own reason (the plain run's
    values are pinned by the test above; normal_repeats and aug_repeats count passes in
    test_distill_aug, max_forward_batch_size changes memory, not results)."""
    assert acts(*knob_setup(overrides))


def test_the_test_images_are_put_in_model_space_for_each_evaluation_only(monkeypatch):
    """A run holds its test images as uint8: the float32 ones are made when a periodic
    evaluation asks (once per evaluation) and never by a run that does not evaluate."""
    from rcig.data import Prepared
    from rcig.evaluation import ProtocolSettings

    made = []
    real = Prepared.test_images
    monkeypatch.setattr(Prepared, "test_images", lambda self: made.append(len(self.y_test)) or real(self))
    distill("digits", 1, steps=2, overrides=TINY, progress=False)
    assert made == []
    settings = ProtocolSettings(width=8, n_models=1, steps=2, settings=("no_aug",), test_limit=20)
    distill("digits", 1, steps=2, overrides=TINY, progress=False, eval_every=1, eval_settings=settings)
    assert made == [360, 360]
