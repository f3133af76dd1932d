"""Chunked recomputation (``chunk_rows``) gives the whole-graph gradients, on tiny float64 problems."""

import pytest
import torch

import rcig.algorithm.meta as meta_module
from rcig.algorithm.inner import BaseNetwork, features_and_change, make_solvers, network, split_params
from rcig.algorithm.meta import Batch, meta_gradient
from rcig.algorithm.recompute import in_chunks
from rcig.config import from_dict, parse_overrides
from rcig.errors import RcigError
from rcig.models import build_model

C, N_IMAGES, N_TARGET = 3, 7, 11


pytestmark = pytest.mark.usefixtures("float64")  # every test here computes in float64


def tiny_base(seed=0):
    torch.manual_seed(seed)
    model = build_model("conv", in_channels=1, num_classes=C, image_size=8, depth=2, width=3,
                        activation="softplus", beta=4.0).double()
    body0, head0 = split_params({k: v.detach() for k, v in model.named_parameters()})
    return BaseNetwork(network(model, head0), body0)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_in_chunks_equals_one_graph_and_forwards_chunks(size):
    f, body0 = tiny_base()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N_IMAGES, 1, 8, 8, generator=g, requires_grad=True)
    delta = {k: (0.3 * torch.randn(v.shape, generator=g)).requires_grad_() for k, v in body0.items()}
    seen = []

    def fn(xx, d):
        seen.append(len(xx))
        return features_and_change(f, body0, xx, d, True)

    d_features = features_and_change(f, body0, x[:1], delta, True)[0].shape[1]
    weights = [torch.randn(N_IMAGES, n, generator=g) for n in (d_features, C)]  # phi (n, D), u (n, C)

    def gradients(chunk):
        outputs = in_chunks(fn, x, delta, chunk)
        loss = sum((w * out).sum() for w, out in zip(weights, outputs)) + (outputs[1] ** 2).sum()
        return outputs, torch.autograd.grad(loss, [x, *delta.values()])

    whole_out, whole = gradients(None)
    seen.clear()
    chunked_out, chunked = gradients(size)
    if size < N_IMAGES:
        assert max(seen) == size and len(seen) == 2 * -(-N_IMAGES // size)  # each chunk: a forward, a recomputation
    else:
        assert seen == [N_IMAGES]  # one chunk: the one graph
    for a, b in zip(whole_out + whole, chunked_out + chunked):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


TINY = {"inner_lr": 1e-2, "hvp_lr": 1e-2,
        "n_inner_steps": 5, "n_hinv_steps": 5, "target_batch_size": N_TARGET}
VARIANTS = {
    "adam": {},
    "cg": {"solver": "cg"},
    "flip": {"flip": True},
    "fixed_labels": {"learn_labels": False},
    "subsampled": {"direct_batch_sizes": [5, 6], "implicit_batch_size": 4, "max_forward_batch_size": 3,
                   "inner_train_batch_size": 6, "hinv_batch_size": 5},
    "aug": {"aug": ["flip", "crop"], "aug_repeats": 1},
    "aug_per_pass": {"aug": ["flip", "crop"], "aug_repeats": 1, "aug_per_pass": True, "solver": "cg", "flip": True},
    "aug_copies": {"aug": ["crop"], "aug_repeats": 1, "aug_per_pass": True, "aug_copies": 2},
}


def step_result(overrides, augmented_pass):
    cfg = from_dict({**TINY, **overrides})
    base = tiny_base()
    g = torch.Generator().manual_seed(2)
    support = {"x": torch.randn(N_IMAGES, 1, 8, 8, generator=g),
               "y": torch.eye(C)[torch.arange(N_IMAGES) % C] - 1 / C + 0.05 * torch.randn(N_IMAGES, C, generator=g),
               "log_temp": torch.tensor(0.1)}
    target = Batch(torch.randn(N_TARGET, 1, 8, 8, generator=g), torch.arange(N_TARGET) % C)
    solvers = make_solvers(cfg, cfg.inner_lr, cfg.hvp_lr, 3)
    return meta_gradient(base, support, target, cfg, solvers, torch.Generator().manual_seed(3), augmented_pass)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("chunk_rows", [2, 5])
def test_meta_gradient_chunked_equals_whole(variant, chunk_rows, monkeypatch):
    sizes = []

    def spy(fn, x, params, size):
        sizes.append(size)
        return in_chunks(fn, x, params, size)

    monkeypatch.setattr(meta_module, "in_chunks", spy)
    augmented_pass = "aug" in VARIANTS[variant]
    whole = step_result({**VARIANTS[variant], "chunk_rows": None}, augmented_pass)
    assert set(sizes) == {None}
    sizes.clear()
    chunked = step_result({**VARIANTS[variant], "chunk_rows": chunk_rows}, augmented_pass)
    assert len(sizes) == 3 and set(sizes) == {chunk_rows}  # support and target features, the implicit JVPs
    assert chunked.outer_loss == pytest.approx(whole.outer_loss, rel=1e-12)
    for part in ("direct", "implicit", "grads"):
        for leaf in ("x", "y", "log_temp"):
            a, b = getattr(whole, part)[leaf], getattr(chunked, part)[leaf]
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13 * float(a.abs().max()), msg=f"{part} {leaf}")
    assert whole.implicit["x"].abs().max() > 0 and whole.direct["x"].abs().max() > 0


def test_forwards_without_a_graph_take_at_most_a_chunk(monkeypatch):
    """With chunk_rows set, the rows that carry no gradient are forwarded at most chunk_rows at
    a time, below max_forward_batch_size: the same step, in more pieces."""
    assert meta_module.forward_rows(from_dict({"max_forward_batch_size": 3, "chunk_rows": 5})) == 3
    assert meta_module.forward_rows(from_dict({"max_forward_batch_size": 300, "chunk_rows": 5})) == 5
    assert meta_module.forward_rows(from_dict({"chunk_rows": 5})) == 5
    assert meta_module.forward_rows(from_dict({"max_forward_batch_size": 300, "chunk_rows": "auto"})) == 300
    assert meta_module.forward_rows(from_dict({"chunk_rows": None})) is None
    seen = []

    def spy(f, body0, x, delta, linearize):
        if not torch.is_grad_enabled():
            seen.append(len(x))
        return features_and_change(f, body0, x, delta, linearize)

    monkeypatch.setattr(meta_module, "features_and_change", spy)
    subsampled = {**VARIANTS["subsampled"], "max_forward_batch_size": 100}
    whole = step_result({**subsampled, "chunk_rows": None}, False)
    assert max(seen) == N_TARGET - 6  # the target rows without gradients, in one piece
    seen.clear()
    chunked = step_result({**subsampled, "chunk_rows": 2}, False)
    assert seen and max(seen) == 2
    assert chunked.outer_loss == pytest.approx(whole.outer_loss, rel=1e-12)
    for part in ("direct", "implicit", "grads"):
        for leaf in ("x", "y", "log_temp"):
            a, b = getattr(whole, part)[leaf], getattr(chunked, part)[leaf]
            torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13 * float(a.abs().max()), msg=f"{part} {leaf}")


@pytest.mark.parametrize("bad, words", [({"chunk_rows": 0}, "positive integer"),
                                        ({"chunk_rows": 4, "linearize": False}, "linearize=true"),
                                        ({"chunk_rows": 4, "norm": "batch"}, "norm none|instance")])
def test_chunk_rows_config_contract(bad, words):
    with pytest.raises(RcigError, match=words):
        from_dict(bad)
    assert from_dict({}).chunk_rows == "auto"  # the default: the run chooses (rcig.algorithm.memory)
    assert from_dict({"chunk_rows": None}).chunk_rows is None  # one graph
    assert from_dict({"chunk_rows": "auto", "linearize": False, "norm": "batch"}).chunk_rows == "auto"  # resolves to one graph
    for text, value in (("auto", "auto"), ("none", None), ("null", None), ("64", 64)):
        assert from_dict(parse_overrides([f"chunk_rows={text}"])).chunk_rows == value
    with pytest.raises(RcigError, match='chunk_rows must be a positive integer or "auto" or null'):
        from_dict(parse_overrides(["chunk_rows=automatic"]))


def test_a_step_given_auto_unresolved_takes_one_graph(monkeypatch):
    """Resolving "auto" needs the memory available, which a run's driver reads; a step called
    directly knows none and takes one graph, as the choice does without a reading."""
    sizes = []
    monkeypatch.setattr(meta_module, "in_chunks", lambda fn, x, params, size: sizes.append(size) or
                        in_chunks(fn, x, params, size))
    step_result({"chunk_rows": "auto"}, False)
    assert sizes and set(sizes) == {None}


@pytest.mark.parametrize("one_shot", [False, True])
@pytest.mark.parametrize("size", [1, 3, 100])
def test_inner_problem_products_chunked_equal_whole(one_shot, size):
    from rcig.algorithm.inner import LinearizedInner

    f, body0 = tiny_base()
    g = torch.Generator().manual_seed(4)
    x_s = torch.randn(N_IMAGES, 1, 8, 8, generator=g)
    y_s = torch.eye(C)[torch.arange(N_IMAGES) % C] - 1 / C
    delta, v = ({k: 0.3 * torch.randn(t.shape, generator=g) for k, t in body0.items()} for _ in range(2))
    whole = LinearizedInner(f, body0, x_s, y_s, 0.05, one_shot)
    chunked = LinearizedInner(f, body0, x_s, y_s, 0.05, one_shot, chunk_rows=size)
    torch.testing.assert_close(chunked.phi, whole.phi, rtol=1e-12, atol=1e-14)
    for method, args in [("loss_and_grad", (delta,)), ("loss_and_grad_at_zero", ()), ("hvp", (delta, v))]:
        a, b = getattr(whole, method)(*args), getattr(chunked, method)(*args)
        if method != "hvp":
            assert b[0] == pytest.approx(a[0], rel=1e-12)
            a, b = a[1], b[1]
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-11, atol=1e-14, msg=f"{method} {k}")


@pytest.mark.parametrize("size", [2, 100])
def test_pool_loss_chunked_equals_whole(size):
    from rcig.algorithm.optim import loss_and_grads, pool_loss

    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=C, image_size=8, depth=2, width=3,
                        activation="softplus", beta=4.0).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(N_IMAGES, 1, 8, 8, generator=g), torch.randn(N_IMAGES, C, generator=g)
    whole = loss_and_grads(lambda p: pool_loss(model, p, x, y), params)
    chunked = loss_and_grads(lambda p: pool_loss(model, p, x, y, size), params)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    for k in params:
        torch.testing.assert_close(chunked[1][k], whole[1][k], rtol=1e-11, atol=1e-14)


def test_outer_step_with_chunks_is_the_same_step(monkeypatch):
    """A whole outer step (meta-gradient, AdaBelief, the pool's training) in float64: the
    same support and pool network with chunk_rows as without, and the pool trains in chunks."""
    import rcig.algorithm.optim as optim_module
    from rcig.algorithm.outer import Distiller
    from rcig.models import distillation_network

    sizes = []

    def spy(fn, x, params, size):
        sizes.append(size)
        return in_chunks(fn, x, params, size)

    monkeypatch.setattr(optim_module, "in_chunks", spy)
    g = torch.Generator().manual_seed(6)
    x_train, y_train = torch.randn(40, 1, 8, 8, generator=g), torch.arange(40) % C

    def step(chunk_rows):
        cfg = from_dict({**TINY, "width": 3, "depth": 2, "pool_size": 1, "flip": True, "chunk_rows": chunk_rows})
        make = distillation_network(cfg, in_channels=1, num_classes=C, image_size=8)  # float64 by default
        distiller = Distiller(x_train, y_train, C, 2, cfg, 0, make)
        state = distiller.new_state()
        state.support = {k: v.double() for k, v in state.support.items()}
        state.optimiser, state.ema = distiller.adabelief.init(state.support), distiller.ema.init(state.support)
        distiller.step(state)
        return state.support, state.pool.params(0)

    whole = step(None)
    assert set(sizes) == {None}
    sizes.clear()
    chunked = step(2)
    assert sizes and set(sizes) == {2}
    for a, b in zip(whole, chunked):
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=k)
