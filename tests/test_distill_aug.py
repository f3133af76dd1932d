"""Augmentation during distillation (aug, aug_repeats) and the support's learning-rate schedule
(the boost and the anneal)."""

import json
import math

import pytest
import torch

from conftest import TINY
import rcig.algorithm.outer as distill_module
from rcig.algorithm.outer import Distiller, lr_multiplier
from rcig.algorithm.inner import BaseNetwork, make_solvers
from rcig.algorithm.meta import (
    Batch, GradSettings, MetaResult, direct_gradient, held_augmentation, meta_gradient, support_augmentation,
)
from rcig.run.driver import distill
from rcig.config import AUGMENTATIONS, Config, from_dict, parse_overrides
from rcig.data import prepare
from rcig.errors import RcigError
from rcig.models import distillation_network

GRAY = ["crop", "rotate", "translate", "cutout"]


def augment(x, names, seed):
    return support_augmentation(tuple(names), torch.Generator().manual_seed(seed))(x)


# ------------------------------------------------------------------ the transforms

@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_transform_passes_gradients_to_the_images(name):
    """d/dx of a scalar of augment(x) is non-zero and matches finite differences (float64).

    Every transform is affine in x for fixed random draws (grid_sample is linear in its
    input), so central differences are exact up to rounding and gradcheck is strict.
    """
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: augment(t, [name], 5), (x,))
    weights = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    (grad,) = torch.autograd.grad((augment(x, [name], 5) * weights).sum(), x)
    assert grad.abs().sum() > 0 and grad.shape == x.shape
    assert (grad.flatten(1).abs().sum(1) > 0).all()  # every image receives a gradient


def test_augmentation_is_seeded_by_the_passed_generator_and_fresh_per_call():
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(augment(x, GRAY, 1), augment(x, GRAY, 1))
    assert not torch.equal(augment(x, GRAY, 1), augment(x, GRAY, 2))
    g = torch.Generator().manual_seed(0)
    fn = support_augmentation(tuple(GRAY), g)
    assert not torch.equal(fn(x), fn(x))  # each call draws anew from the generator
    assert support_augmentation((), g) is None


def test_direct_gradient_reaches_the_images_through_the_transform():
    """With a flip of every row as the augmentation, the direct gradient w.r.t. the images is
    the flip of the plain direct gradient of the flipped support (chain rule through flip)."""
    f, body0, support, x_t, y_t = tiny_problem()
    delta = {k: 0.01 * torch.randn_like(v) for k, v in body0.items()}
    options = dict(l2=1e-3, flip=False, linearize=True, learn_labels=True)
    flip_all = support_augmentation(("flip",), torch.Generator().manual_seed(0))
    _, _, through, _ = direct_gradient(BaseNetwork(f, body0), support, delta, Batch(x_t, y_t), GradSettings(**options),
                                       augment=flip_all)
    flipped = {**support, "x": support["x"].flip(-1)}
    _, _, plain, _ = direct_gradient(BaseNetwork(f, body0), flipped, delta, Batch(x_t, y_t), GradSettings(**options))
    assert torch.allclose(through["x"], plain["x"].flip(-1), atol=1e-7, rtol=1e-5)
    assert not torch.allclose(through["x"], plain["x"], atol=1e-7, rtol=1e-5)  # the flip mattered


def tiny_problem():
    from rcig.algorithm.inner import network, split_params
    from rcig.models import build_model

    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=3, image_size=8, width=4, activation="softplus")
    body0, head0 = split_params({k: v.detach() for k, v in model.named_parameters()})
    support = {"x": torch.randn(6, 1, 8, 8), "y": torch.randn(6, 3) * 0.3, "log_temp": torch.zeros(())}
    return network(model, head0), body0, support, torch.randn(20, 1, 8, 8), torch.randint(0, 3, (20,))


def one_pass(f, body0, support, x_t, y_t, cfg, *rest):
    """``meta_gradient`` of one pass with the Adam solves at 3e-3 (or cfg's CG) on a fresh network."""
    return meta_gradient(BaseNetwork(f, body0), support, Batch(x_t, y_t), cfg, make_solvers(cfg, 3e-3, 3e-3, 0), *rest)


# ----------------------------------------------------------------- meta-gradient passes

def test_a_normal_pass_keeps_the_outer_problem_plain_and_an_augmented_pass_does_not():
    """With no inner steps (delta* = 0 either way), a normal pass with `aug` set is exactly the
    plain meta-gradient; an augmented pass differs. With inner steps, `aug` changes delta*
    (the inner solve sees the augmentations), as in the reference."""
    f, body0, support, x_t, y_t = tiny_problem()
    plain_cfg = Config(n_inner_steps=0, n_hinv_steps=3)
    aug_cfg = plain_cfg.replace(aug=GRAY)
    run = lambda cfg, aug_pass: one_pass(f, body0, support, x_t, y_t, cfg,  # noqa: E731
                                              torch.Generator().manual_seed(0), aug_pass)
    plain, normal, augmented = run(plain_cfg, False), run(aug_cfg, False), run(aug_cfg, True)
    for k in ("x", "y"):
        assert torch.equal(plain.grads[k], normal.grads[k])
        assert not torch.equal(plain.grads[k], augmented.grads[k])
    stepped = [run(cfg.replace(n_inner_steps=3), False).delta for cfg in (plain_cfg, aug_cfg)]
    assert any(not torch.equal(stepped[0][k], stepped[1][k]) for k in stepped[0])


def test_a_held_augmentation_replays_one_draw_at_every_call():
    x = torch.randn(16, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    first, second = held_augmentation(tuple(GRAY), g), held_augmentation(tuple(GRAY), g)
    assert torch.equal(first(x), first(x)) and not torch.equal(first(x), x)
    assert not torch.equal(first(x), second(x))  # each held draw takes its own seed from g


@pytest.mark.parametrize("solver", ["adam", "cg"])
def test_an_aug_per_pass_pass_is_the_plain_pass_of_the_transformed_support(solver):
    """Oracle, with a flip of every row as the transform: an augmented pass holding it is the
    plain meta-gradient of the flipped support, chain-ruled back (x: flipped; y: equal), inner
    solve and H^-1 g included, so CG can run it; a plain pass is plain throughout."""
    f, body0, support, x_t, y_t = tiny_problem()
    plain_cfg = Config(n_inner_steps=4, n_hinv_steps=4, solver=solver)
    held_cfg = plain_cfg.replace(aug=("flip",), aug_per_pass=True)
    run = lambda cfg, s, aug_pass: one_pass(f, body0, s, x_t, y_t, cfg,  # noqa: E731
                                                 torch.Generator().manual_seed(0), aug_pass)
    flipped = {**support, "x": support["x"].flip(-1)}
    held, oracle = run(held_cfg, support, True), run(plain_cfg, flipped, False)
    assert torch.allclose(held.grads["x"], oracle.grads["x"].flip(-1), atol=1e-7, rtol=1e-4)
    assert torch.allclose(held.grads["y"], oracle.grads["y"], atol=1e-7, rtol=1e-4)
    assert all(torch.allclose(held.delta[k], oracle.delta[k], atol=1e-7, rtol=1e-4) for k in held.delta)
    plain = run(plain_cfg, support, False)
    assert not torch.allclose(held.grads["x"], plain.grads["x"], atol=1e-7, rtol=1e-4)  # the flip mattered
    normal = run(held_cfg, support, False)
    assert all(torch.equal(normal.grads[k], plain.grads[k]) for k in ("x", "y"))


def test_aug_copies_make_the_pass_support_k_transformed_copies_with_their_labels():
    """Oracle: with a flip of every row and aug_copies=2, an augmented pass is the plain pass of
    the support [flip(x); flip(x)] with labels [y; y] (at the same l2, so l2_rate halved there),
    each image's gradient summing its two copies' (chain rule through the tiling)."""
    f, body0, support, x_t, y_t = tiny_problem()
    held_cfg = Config(n_inner_steps=4, n_hinv_steps=4, solver="cg", aug=("flip",), aug_per_pass=True, aug_copies=2)
    held = one_pass(f, body0, support, x_t, y_t, held_cfg, torch.Generator().manual_seed(0), True)
    n = len(support["x"])
    tiled = {"x": support["x"].flip(-1).repeat(2, 1, 1, 1), "y": support["y"].repeat(2, 1),
             "log_temp": support["log_temp"]}
    oracle_cfg = Config(n_inner_steps=4, n_hinv_steps=4, solver="cg", l2_rate=held_cfg.l2_rate / 2)
    oracle = one_pass(f, body0, tiled, x_t, y_t, oracle_cfg, torch.Generator().manual_seed(0))
    # the direct parts are exact; the implicit part is clipped per leaf, so compare direct + implicit
    for part in ("direct", "implicit"):
        got, want = getattr(held, part), getattr(oracle, part)
        assert torch.allclose(got["x"], (want["x"][:n] + want["x"][n:]).flip(-1), atol=1e-6, rtol=1e-4)
        assert torch.allclose(got["y"], want["y"][:n] + want["y"][n:], atol=1e-6, rtol=1e-4)
    one = one_pass(f, body0, support, x_t, y_t, held_cfg.replace(aug_copies=1),
                        torch.Generator().manual_seed(0), True)
    assert not torch.allclose(one.direct["y"], held.direct["y"], atol=1e-6, rtol=1e-4)  # the copies mattered


def distiller(cfg, seed=0):
    prepared = prepare("digits")
    ds = prepared.dataset
    return Distiller(prepared.x_train, prepared.y_train, ds.num_classes, 1, cfg, seed,
                     distillation_network(cfg, in_channels=ds.channels, num_classes=ds.num_classes,
                                          image_size=ds.image_size))


@pytest.mark.parametrize("normal, aug", [(1, 0), (2, 3), (1, 1), (0, 2)])
def test_aug_repeats_passes_are_averaged_with_the_normal_ones(monkeypatch, normal, aug):
    """Each outer step runs `normal_repeats` plain passes, then `aug_repeats` augmented ones,
    each on its own target batch, and steps the support with their plain mean."""
    calls = []

    def fake_meta(base, support, target, cfg, solvers, generator, augmented_pass, split=None):
        calls.append((augmented_pass, target.x))
        value = 1.0 if augmented_pass else 0.0
        grads = {k: torch.full_like(v, value) for k, v in support.items()}
        zero = {"w": torch.zeros(2)}
        return MetaResult(grads, grads, grads, value, value, [1.0, 0.5], [1.0, 0.5], zero,
                          {"inner_solve": 0.0})

    monkeypatch.setattr(distill_module, "meta_gradient", fake_meta)
    cfg = Config(**{**TINY, "normal_repeats": normal, "aug_repeats": aug, "aug": ("cutout",)} if aug else
                 {**TINY, "normal_repeats": normal})
    d = distiller(cfg)
    seen = []
    step = d.adabelief.step
    d.adabelief.step = lambda params, grads, state, scale=None: seen.append(grads) or step(params, grads, state, scale)
    state = d.new_state()
    record = d.step(state)
    assert [a for a, _ in calls] == [False] * normal + [True] * aug
    assert all(not torch.equal(calls[0][1], x_t) for _, x_t in calls[1:])  # fresh target batches
    assert torch.allclose(seen[0]["x"], torch.full_like(seen[0]["x"], aug / (normal + aug)))
    assert record["outer_loss"] == pytest.approx(aug / (normal + aug))


def test_pool_networks_train_on_augmented_support(monkeypatch):
    """With the meta-gradient faked (no augmentation there), `aug` still changes what the used
    pool network learns: its steps see augmented support rows."""
    def fake_meta(base, support, *args, **kwargs):
        grads = {k: torch.zeros_like(v) for k, v in support.items()}
        zero = {"w": torch.zeros(2)}
        return MetaResult(grads, grads, grads, 0.0, 0.0, [], [], zero, {})

    monkeypatch.setattr(distill_module, "meta_gradient", fake_meta)
    trained = []
    for aug in ((), ("cutout",)):
        d = distiller(Config(**{**TINY, "max_online_steps": 100}, aug=aug))  # member kept after its steps
        state = d.new_state()
        index = d.step(state)["pool_model"]
        trained.append(state.pool.params(index))
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


def run_hash(overrides, steps=2):
    result = distill("digits", 1, steps=steps, seed=1, overrides={**TINY, **overrides}, progress=False)
    return result.images, result.labels


def test_the_explicit_off_settings_are_the_defaults():
    base = run_hash({})
    off = run_hash({"aug": [], "aug_repeats": 0, "proto_lr_boost": 1.0, "proto_lr_boost_steps": 0,
                    "proto_lr_final": 1.0, "proto_lr_final_step": 0})
    assert all(torch.equal(a, b) for a, b in zip(base, off))


# ---------------------------------------------------------------------- config

@pytest.mark.parametrize("values, message", [
    ({"aug": ["crop", "zoom"]}, "unknown augmentation"),
    ({"aug": 3}, "must be a list"),  # one name alone is a list of one: ("crop",)
    ({"aug_repeats": -1}, "aug_repeats must be a non-negative integer"),
    ({"aug_repeats": 1}, "aug_repeats needs aug"),
    ({"aug": ["crop"], "solver": "cg"}, "solver cg needs a fixed inner problem"),
    ({"aug_per_pass": True}, "aug_per_pass needs aug"),
    ({"aug": ["crop"], "aug_copies": 2}, "aug_copies > 1 needs aug_per_pass"),
    ({"aug": ["crop"], "aug_per_pass": True, "aug_copies": 0}, "aug_copies must be a positive integer"),
    ({"normal_repeats": 0}, "normal_repeats \\+ aug_repeats must be at least 1"),
    ({"normal_repeats": -1}, "normal_repeats must be a non-negative integer"),
    ({"test_augmentations": [1, 2]}, "must be a list"),
    ({"proto_lr_boost": 0.5, "proto_lr_boost_steps": 10}, "proto_lr_boost must be >= 1"),
    ({"proto_lr_boost": 3.0}, "needs proto_lr_boost_steps > 0"),
    ({"proto_lr_boost_steps": -1}, "proto_lr_boost_steps must be a non-negative integer"),
    ({"proto_lr_final": 0.0, "proto_lr_final_step": 10}, "proto_lr_final must be in \\(0, 1\\]"),
    ({"proto_lr_final": 1.5, "proto_lr_final_step": 10}, "proto_lr_final must be in \\(0, 1\\]"),
    ({"proto_lr_final": 0.1, "proto_lr_boost": 3, "proto_lr_boost_steps": 300, "proto_lr_final_step": 300},
     "proto_lr_final < 1 needs proto_lr_final_step > proto_lr_boost_steps"),
    ({"proto_lr_final_step": -1}, "proto_lr_final_step must be a non-negative integer"),
    ({"proto_lr_final": 0.1, "proto_lr_boost": 3, "proto_lr_boost_steps": 300, "proto_lr_final_step": 200},
     "proto_lr_final < 1 needs proto_lr_final_step > proto_lr_boost_steps"),
])
def test_bad_settings_are_one_line_errors(values, message):
    with pytest.raises(RcigError, match=message):
        from_dict(values)


def test_cg_runs_augmented_passes_that_hold_their_draw():
    runs = [run_hash({"solver": "cg", "n_inner_steps": 3, "n_hinv_steps": 3, **extra}) for extra in
            ({}, {"aug": GRAY, "aug_per_pass": True, "normal_repeats": 0, "aug_repeats": 1})]
    assert not torch.equal(runs[0][0], runs[1][0]) and torch.isfinite(runs[1][0]).all()


def test_command_line_lists_parse_to_transform_tuples():
    cfg = from_dict(parse_overrides(['aug=["crop","rotate","translate","cutout"]', "aug_repeats=1",
                                     "proto_lr_boost=3", "proto_lr_boost_steps=200"]))
    assert cfg.aug == tuple(GRAY) and cfg.aug_repeats == 1 and cfg.proto_lr_boost == 3
    assert Config().aug == () and Config().aug_repeats == 0 and Config().proto_lr_boost == 1.0


# ------------------------------------------------- the support's learning-rate schedule

def test_boost_schedule_values():
    boost = lambda b, n, t: lr_multiplier(t, boost=b, boost_steps=n)  # noqa: E731
    assert boost(1.0, 0, 0) == 1.0 and boost(1.0, 100, 7) == 1.0  # off: exactly 1
    assert boost(10.0, 100, 0) == 10.0
    assert boost(10.0, 100, 50) == pytest.approx(5.5)
    assert boost(10.0, 100, 25) == pytest.approx(1 + 9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert boost(10.0, 100, 99) == pytest.approx(1.0, abs=0.01) and boost(10.0, 100, 99) > 1
    assert boost(10.0, 100, 100) == 1.0 and boost(10.0, 100, 5000) == 1.0
    values = [boost(3.0, 40, t) for t in range(41)]
    assert all(a > b for a, b in zip(values[:-1], values[1:]))  # decays monotonically


def test_anneal_schedule_values_after_a_boost():
    """Boost 3 over 10 steps, then anneal to 0.1 at step number 31 (t = 30): 20 steps of cosine."""
    m = lambda t: lr_multiplier(t, boost=3.0, boost_steps=10, final=0.1, final_step=31)  # noqa: E731
    assert m(0) == 3.0  # the start: the boost
    assert m(5) == pytest.approx(2.0)  # halfway through the boost
    assert m(10) == pytest.approx(1.0)  # the boost's end is the anneal's start
    assert m(20) == pytest.approx(0.55)  # halfway through the anneal: (1 + f) / 2
    assert m(25) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 20)))
    assert m(29) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 19 / 20))) and m(29) > 0.1
    assert m(30) == 0.1 and m(31) == 0.1 and m(5000) == 0.1  # the last step of the anneal runs at f, and on
    values = [m(t) for t in range(31)]
    assert all(a > b for a, b in zip(values[:-1], values[1:]))  # one monotone decay from 3 to 0.1


def test_anneal_schedule_values_without_a_boost():
    """No boost: the anneal runs from 1 at the first step to 0.5 at step number 11 (t = 10)."""
    m = lambda t: lr_multiplier(t, final=0.5, final_step=11)  # noqa: E731
    assert m(0) == 1.0 and m(5) == pytest.approx(0.75) and m(10) == 0.5 and m(11) == 0.5
    assert m(9) == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * 9 / 10)))
    assert lr_multiplier(10, boost=3.0, boost_steps=10, final=0.1, final_step=11) == 0.1  # one step after the boost
    assert lr_multiplier(0, final=0.2, final_step=1) == 0.2  # the anneal ends at the first step


def test_anneal_off_is_exactly_the_boost_alone():
    """final = 1 leaves the boost's schedule bit for bit, wherever the anneal's end is."""
    for final_step in (0, 11, 500):
        assert all(lr_multiplier(t, 3.0, 10, 1.0, final_step) == lr_multiplier(t, 3.0, 10) for t in range(600))
    assert all(lr_multiplier(t, final_step=40) == 1.0 for t in range(100))


def test_anneal_changes_the_images_and_off_is_bit_identical():
    boosted = {"proto_lr_boost": 3.0, "proto_lr_boost_steps": 1}
    base = run_hash(boosted, steps=3)
    off = run_hash({**boosted, "proto_lr_final": 1.0, "proto_lr_final_step": 3}, steps=3)
    assert all(torch.equal(a, b) for a, b in zip(base, off))
    annealed = run_hash({**boosted, "proto_lr_final": 0.5, "proto_lr_final_step": 3}, steps=3)
    assert not torch.equal(base[0], annealed[0]) and torch.isfinite(annealed[0]).all()


def test_an_annealed_run_extended_by_resume_is_the_run_given_all_its_steps(tmp_path):
    """The anneal ends at its own step, not at ``steps``: a run of 2 steps extended to 4 (the
    whole state kept) follows the schedule of a run of 4, bit for bit (benchmarks/variants.py
    drives its runs in such chunks)."""
    overrides = {**TINY, "proto_lr_final": 0.5, "proto_lr_final_step": 4}
    whole = distill("digits", 1, steps=4, seed=1, overrides=overrides, progress=False)
    out = tmp_path / "run"
    distill("digits", 1, steps=2, seed=1, overrides=overrides, out=out, keep_checkpoint=True, progress=False)
    extended = distill(out=out, resume=True, steps=4, progress=False)
    assert torch.equal(whole.images, extended.images) and torch.equal(whole.labels, extended.labels)


def test_an_anneal_left_to_the_run_ends_at_its_last_step(tmp_path):
    """``proto_lr_final_step`` 0: a run of 12 steps anneals to f at step 12, bit for bit the run
    told step 12; under a budget the end is projected after the first steps (here the budget
    is ample, so the step count bounds it), fixed in the checkpoint, and the run is the same."""
    boost = {**TINY, "proto_lr_boost": 2.0, "proto_lr_boost_steps": 10, "proto_lr_final": 0.25}
    told = distill("digits", 1, steps=12, seed=1, overrides={**boost, "proto_lr_final_step": 12}, progress=False)
    counted = distill("digits", 1, steps=12, seed=1, overrides={**boost, "proto_lr_final_step": 0}, progress=False)
    out = tmp_path / "budgeted"
    budgeted = distill("digits", 1, steps=12, seed=1, overrides={**boost, "proto_lr_final_step": 0}, out=out,
                       max_minutes=60, keep_checkpoint=True, progress=False)
    for run in (counted, budgeted):
        assert torch.equal(told.images, run.images) and torch.equal(told.labels, run.labels)
    assert torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["anneal_end"] == 12
    rates = [r["proto_lr"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "proto_lr" in r]
    assert rates[-1] == pytest.approx(0.25 * Config(**TINY).proto_lr) and rates[-2] > rates[-1]


def test_a_budget_projects_the_anneals_end_from_the_mean_step():
    from rcig.run.driver import UNTIL_BUDGET, budget_end
    from rcig.timing import projected_last_step

    assert projected_last_step(10, 10, 20.0, 600.0) == 310  # 2 s a step, 600 s left: 300 more
    assert projected_last_step(10, 10, 20.0, 1.0) == 10 and projected_last_step(10, 10, 20.0, -5.0) == 10
    cfg = Config(proto_lr_boost=3.0, proto_lr_boost_steps=300, proto_lr_final=0.1, steps=UNTIL_BUDGET)
    assert budget_end(cfg, 10, 10, 20.0, 1200.0) == 610
    assert budget_end(cfg, 10, 10, 20.0, 60.0) == 301  # a budget that ends in the boost: no anneal within it
    assert budget_end(cfg.replace(steps=400), 10, 10, 20.0, 1200.0) == 400  # a step count bounds it
    assert budget_end(cfg.replace(proto_lr_boost=1.0, proto_lr_boost_steps=0), 10, 10, 20.0, 0.0) == 11


@pytest.mark.parametrize("schedule, factor", [({"proto_lr_boost": 3.0, "proto_lr_boost_steps": 10}, 3.0),
                                               ({"proto_lr_final": 0.25, "proto_lr_final_step": 1}, 0.25)])
def test_the_schedule_scales_the_first_step_of_images_and_labels(schedule, factor):
    """AdaBelief's first step is ~lr per element, so the images and labels move ``factor``
    times as far as without the schedule (same gradient: the update happens after it);
    log_temp as far (temp_lr follows neither the boost nor the anneal)."""
    moves = {}
    for name, overrides in (("off", {}), ("on", schedule)):
        cfg = Config(**TINY, **overrides)
        d = distiller(cfg)
        state = d.new_state()
        before = {k: v.clone() for k, v in state.support.items()}
        record = d.step(state)
        moves[name] = {k: state.support[k] - before[k] for k in before}
        assert record["proto_lr"] == pytest.approx(cfg.proto_lr * (factor if name == "on" else 1.0))
    for k in ("x", "y"):
        assert moves["off"][k].abs().max() > 0
        assert torch.allclose(moves["on"][k], factor * moves["off"][k], rtol=1e-4, atol=1e-7)
    assert torch.allclose(moves["on"]["log_temp"], moves["off"]["log_temp"])
