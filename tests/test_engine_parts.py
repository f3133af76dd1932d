"""Engine building blocks: functional optimisers, the model pool, crash-safe checkpoints."""

import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

import rcig.run.checkpoint as checkpoint_module
from rcig.run.checkpoint import load_checkpoint, save_checkpoint
from rcig.algorithm.optim import EMA, Adam, AdaBelief, ModelPool, draw_pool_steps
from rcig.errors import RcigError

# ----------------------------------------------------------------------------- optimisers


def adabelief_reference(gs, lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    """optax.adabelief on one scalar, written out in Python floats."""
    x, mu, nu, out = 0.0, 0.0, 0.0, []
    for t, g in enumerate(gs, start=1):
        mu_old = mu
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * (g - mu_old) ** 2 + eps_root
        x -= lr * (mu / (1 - b1 ** t)) / (math.sqrt(nu / (1 - b2 ** t)) + eps)
        out.append(x)
    return out


def test_adabelief_matches_hand_computed_steps_with_per_leaf_lrs():
    grads = [{"x": torch.tensor([0.5, -2.0], dtype=torch.float64), "log_temp": torch.tensor(1.0, dtype=torch.float64)},
             {"x": torch.tensor([0.1, -1.0], dtype=torch.float64), "log_temp": torch.tensor(-3.0, dtype=torch.float64)},
             {"x": torch.tensor([-0.4, 3.0], dtype=torch.float64), "log_temp": torch.tensor(0.2, dtype=torch.float64)}]
    lrs = {"x": 0.003, "log_temp": 0.03}
    opt = AdaBelief(lrs)
    params = {"x": torch.zeros(2, dtype=torch.float64), "log_temp": torch.tensor(0.0, dtype=torch.float64)}
    state = opt.init(params)
    history = []
    for g in grads:
        before = {k: v.clone() for k, v in params.items()}
        new_params, new_state = opt.step(params, g, state)
        assert all(torch.equal(params[k], before[k]) for k in params)  # pure: inputs untouched
        params, state = new_params, new_state
        history.append({k: v.clone() for k, v in params.items()})
    assert state["count"] == 3 and isinstance(state["count"], int)
    # first step of AdaBelief is -lr * sign(g) (to ~1e-10)
    assert history[0]["x"].tolist() == pytest.approx([-0.003, 0.003], abs=1e-12)
    assert float(history[0]["log_temp"]) == pytest.approx(-0.03, abs=1e-12)
    for i in range(2):
        ref = adabelief_reference([float(g["x"][i]) for g in grads], lrs["x"])
        assert [float(h["x"][i]) for h in history] == pytest.approx(ref, rel=1e-12, abs=1e-15)
    ref_t = adabelief_reference([float(g["log_temp"]) for g in grads], lrs["log_temp"])
    assert [float(h["log_temp"]) for h in history] == pytest.approx(ref_t, rel=1e-12, abs=1e-15)
    # the belief term uses the OLD moment: nu_2 = b2 nu_1 + (1 - b2)(g_2 - mu_1)^2 + eps_root
    g1, g2 = 1.0, -3.0
    nu2 = 0.999 * (0.001 * g1 ** 2 + 1e-16) + 0.001 * (g2 - 0.1 * g1) ** 2 + 1e-16
    _, s2 = AdaBelief(lrs).step(*[{"log_temp": torch.tensor(v, dtype=torch.float64)} for v in (0.0, g2)],
                                {"count": 1, "mu": {"log_temp": torch.tensor(0.1 * g1, dtype=torch.float64)},
                                 "nu": {"log_temp": torch.tensor(0.001 * g1 ** 2 + 1e-16, dtype=torch.float64)}})
    assert float(s2["nu"]["log_temp"]) == pytest.approx(nu2, rel=1e-14)


def test_adam_matches_torch_adam_with_a_changing_lr():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 3, generator=gen)
    b0 = torch.randn(3, generator=gen)
    x, target = torch.randn(8, 4, generator=gen), torch.randn(8, 3, generator=gen)
    loss = lambda w, b: ((x @ w + b - target) ** 2).mean()  # noqa: E731
    lrs = [0.1, 0.05, 0.2, 0.01, 0.1, 0.3]

    tw, tb = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    torch_opt = torch.optim.Adam([tw, tb], lr=lrs[0])
    opt = Adam()
    params = {"w": w0.clone(), "b": b0.clone()}
    state = opt.init(params)
    for lr in lrs:
        torch_opt.param_groups[0]["lr"] = lr
        torch_opt.zero_grad()
        loss(tw, tb).backward()
        torch_opt.step()
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        grads = dict(zip(leaves, torch.autograd.grad(loss(leaves["w"], leaves["b"]), list(leaves.values()))))
        params, state = opt.step(params, grads, state, lr=lr)
        torch.testing.assert_close(params["w"], tw.detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(params["b"], tb.detach(), rtol=0, atol=1e-6)
    assert state["count"] == len(lrs)
    assert float(loss(params["w"], params["b"])) < float(loss(w0, b0))


def test_ema_is_bias_corrected_and_pure():
    ema = EMA(0.9)
    state = ema.init({"a": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ValueError):
        ema.average(state)
    values = [1.0, 2.0, 4.0]
    hidden, expected = 0.0, []
    for t, v in enumerate(values, start=1):
        hidden = 0.9 * hidden + 0.1 * v
        expected.append(hidden / (1 - 0.9 ** t))
    assert expected[:2] == pytest.approx([1.0, (0.09 + 0.2) / 0.19])
    for v, e in zip(values, expected):
        old = state
        state = ema.update(state, {"a": torch.full((2,), v, dtype=torch.float64)})
        assert old["count"] == state["count"] - 1 and old["hidden"]["a"] is not state["hidden"]["a"]
        assert ema.average(state)["a"].tolist() == pytest.approx([e, e], rel=1e-14)


# ----------------------------------------------------------------------------- model pool

class TinyNet(nn.Module):
    """The model interface the pool relies on, at toy size: 2 features -> 3 classes."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(2, 4)
        self.classifier = nn.Linear(4, 3)

    def forward(self, x, return_features=False):
        features = torch.relu(self.body(x))
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


X = torch.linspace(-1, 1, 20).reshape(10, 2)
Y = torch.eye(3)[torch.arange(10) % 3] - 1 / 3


def mse(params):
    out = torch.func.functional_call(TinyNet(), params, (X,))
    return 0.5 * ((out - Y) ** 2).mean()


def make_pool(seed, size=3, lr=0.01, max_online_steps=10, make_model=TinyNet):
    return ModelPool(make_model, size, lr, max_online_steps, torch.Generator().manual_seed(seed))


def test_pool_init_is_seeded_distinct_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = make_pool(7), make_pool(7), make_pool(8)
    assert torch.equal(torch.rand(3), expected_next)  # pool creation did not consume global RNG
    assert len(a) == 3 and set(a.params(0)) == {"body.weight", "body.bias", "classifier.weight", "classifier.bias"}
    for i in range(3):
        assert all(torch.equal(a.params(i)[k], b.params(i)[k]) for k in a.params(i))
    assert not torch.equal(a.params(0)["body.weight"], a.params(1)["body.weight"])
    assert not torch.equal(a.params(0)["body.weight"], c.params(0)["body.weight"])


def test_draw_pool_steps_and_pick_cover_their_ranges():
    gen = torch.Generator().manual_seed(0)
    draws = [draw_pool_steps(gen, 16) for _ in range(600)]
    assert set(draws) == set(range(1, 16))  # 1..15 inclusive, like jax randint(1, 16)
    assert draw_pool_steps(gen, 1) == 1
    pool = make_pool(0, size=4)
    assert {pool.pick(gen) for _ in range(200)} == {0, 1, 2, 3}


def test_pool_train_descends_counts_steps_and_replaces_used_up_members():
    pool = make_pool(1, max_online_steps=10)
    theta0 = {k: v.clone() for k, v in pool.params(1).items()}
    losses = pool.train(1, mse, 6)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert member_counts(pool, 1) == (6, 6)
    assert all(torch.equal(pool.params(1)[k], theta0[k]) is False for k in ("body.weight", "classifier.weight"))
    assert all(not v.requires_grad for v in pool.params(1).values())
    # the stored weights continue where the last step left them
    assert mse(pool.params(1)).item() < losses[-1]
    other = {k: v.clone() for k, v in pool.params(0).items()}
    pool.train(1, mse, 4)  # reaches max_online_steps -> a fresh network
    assert member_counts(pool, 1) == (0, 0)
    assert not torch.equal(pool.params(1)["body.weight"], theta0["body.weight"])
    assert all(torch.equal(pool.params(0)[k], other[k]) for k in other)  # others untouched


def member_counts(pool, index):
    """(training steps, Adam steps) of pool member ``index``, from its public state (an
    untrained member is stored as its seed: no Adam state yet)."""
    member = pool.state_dict()["members"][index]
    return member["steps"], member["adam"]["count"] if "adam" in member else 0


def run_pool_schedule(pool, gen, n):
    """Pick, train a drawn number of steps, repeat; returns the losses seen."""
    out = []
    for _ in range(n):
        i = pool.pick(gen)
        out += pool.train(i, mse, draw_pool_steps(gen, 5))
    return out


def test_pool_resumes_bit_exactly_through_a_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(5)
    pool = make_pool(2, max_online_steps=6)
    run_pool_schedule(pool, gen, 4)
    save_checkpoint(tmp_path / "c.pt", {"pool": pool.state_dict(), "gen": gen.get_state()})
    expected = run_pool_schedule(pool, gen, 8)  # includes replacements (max 6 steps)

    restored = make_pool(99, max_online_steps=6)  # a different init, overwritten by the load
    loaded = load_checkpoint(tmp_path / "c.pt")
    restored.load_state_dict(loaded["pool"])
    gen2 = torch.Generator()
    gen2.set_state(loaded["gen"])
    assert run_pool_schedule(restored, gen2, 8) == expected
    for i, (a, b) in enumerate(zip(pool.state_dict()["members"], restored.state_dict()["members"])):
        assert a["steps"] == b["steps"] and a["seed"] == b["seed"] and a.keys() == b.keys()
        assert all(torch.equal(pool.params(i)[k], restored.params(i)[k]) for k in pool.params(i))
        if "adam" in a:
            assert a["adam"]["count"] == b["adam"]["count"] == a["steps"]
            assert all(torch.equal(a["adam"]["nu"][k], b["adam"]["nu"][k]) for k in a["params"])
    with pytest.raises(RcigError, match="not a checkpoint of this run"):
        restored.load_state_dict({"generator": gen.get_state()})


def test_pool_checkpoint_holds_untrained_members_as_seeds_only():
    """A member that has not trained is its init seed alone (weights rebuilt from it on use);
    a trained one is stored whole (weights + Adam moments), which exact resume needs."""
    pool = make_pool(3, size=4)
    pool.params(1)  # built for use, still untrained
    pool.train(2, mse, 3)
    members = pool.state_dict()["members"]
    assert [sorted(m) for m in members] == [["seed", "steps"]] * 2 + [["adam", "params", "seed", "steps"]] + \
        [["seed", "steps"]]
    fresh = make_pool(3, size=4)
    for i in (0, 1, 3):
        assert members[i]["seed"] == fresh.members[i]["seed"]
        assert all(torch.equal(pool.params(i)[k], fresh.params(i)[k]) for k in fresh.params(i))


def test_pool_with_the_real_convnet_factory():
    from rcig.models import build_model

    def make():
        return build_model("conv", in_channels=1, num_classes=3, image_size=8, depth=2, width=4)

    pool = make_pool(0, size=2, make_model=make)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = make()

    def loss(params):
        return 0.5 * ((torch.func.functional_call(model, params, (x,)) - Y[:6]) ** 2).mean()

    assert "classifier.weight" in pool.params(0)
    losses = pool.train(0, loss, 3)
    assert losses[-1] < losses[0]


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_is_bit_exact_and_restores_rng_streams(tmp_path):
    gen = torch.Generator().manual_seed(42)
    torch.randn(5, generator=gen)
    py_rng, np_rng = random.Random(3), np.random.default_rng(4)
    state = {
        "f32": torch.tensor([1.0, float("nan"), -0.0, 1e-45]), "f64": torch.randn(3, 2, dtype=torch.float64),
        "bf16": torch.randn(4).to(torch.bfloat16), "i64": torch.tensor([2 ** 62, -1]), "mask": torch.tensor([True, False]),
        "iteration": 17, "lr": 3.5e-5, "name": "depth_3", "none": None, "outcomes": [1, -1, 0],
        "pair": (None, 256), "nested": {"a": {"b": [torch.ones(2), 2.0]}},
        "generator": gen.get_state(), "py_random": py_rng.getstate(), "np_random": np_rng.bit_generator.state,
        "np_array": np.arange(6, dtype=np.int32).reshape(2, 3), "np_scalar": np.float32(0.25),
    }
    save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    back = load_checkpoint(tmp_path / "sub" / "ck.pt")
    for k in ("f32", "f64", "bf16", "i64", "mask"):
        assert back[k].dtype == state[k].dtype
        assert torch.equal(back[k].view(torch.uint8), state[k].view(torch.uint8))  # bitwise, NaN included
    assert (back["iteration"], back["lr"], back["name"], back["none"], back["outcomes"]) == (17, 3.5e-5, "depth_3", None, [1, -1, 0])
    assert tuple(back["pair"]) == (None, 256) and torch.equal(back["nested"]["a"]["b"][0], torch.ones(2))
    assert torch.equal(back["np_array"], torch.arange(6, dtype=torch.int32).reshape(2, 3)) and back["np_scalar"] == 0.25

    expected = torch.randn(4, generator=gen)
    gen2 = torch.Generator()
    gen2.set_state(back["generator"])
    assert torch.equal(torch.randn(4, generator=gen2), expected)
    py2 = random.Random()
    py2.setstate(back["py_random"])
    assert py2.random() == py_rng.random()
    np2 = np.random.default_rng()
    np2.bit_generator.state = back["np_random"]
    assert np2.random() == np_rng.random()


def test_unstorable_objects_fail_before_touching_the_disk(tmp_path):
    with pytest.raises(TypeError, match=r"state\['gen'\].*get_state"):
        save_checkpoint(tmp_path / "x.pt", {"gen": torch.Generator()})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})

    def half_write_then_crash(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", half_write_then_crash)
    with pytest.raises(RcigError, match=r"cannot write \S*latest.pt: disk full"):  # the user's file, not the temp
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["latest.pt"]
    old = load_checkpoint(path)
    assert old["iteration"] == 1 and torch.equal(old["w"], torch.ones(3))


def test_atomic_write_fsyncs_and_never_leaves_its_temp_file(tmp_path, monkeypatch):
    from rcig.atomic import atomic_write

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "new" / "out.bin"
    atomic_write(path, lambda fh: fh.write(b"first"))
    assert path.read_bytes() == b"first" and len(synced) == 2  # the file, then its directory

    def fail(fh):
        fh.write(b"half")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"first" and os.listdir(path.parent) == ["out.bin"]


def test_every_writer_goes_through_the_atomic_helper():
    """One helper for the temp-file-and-rename mechanism: nothing else calls mkstemp or os.replace."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("src/rcig/**/*.py"), *root.glob("benchmarks/*.py")]
    users = sorted(str(p.relative_to(root)) for p in sources
                   if "mkstemp" in p.read_text() or "os.replace" in p.read_text())
    assert users == ["src/rcig/atomic.py"]


def test_a_flipped_byte_in_a_tensor_is_refused_as_damage(tmp_path):
    """torch reads such a file without complaint; only the checksum saved with it tells."""
    path = tmp_path / "latest.pt"
    weights = torch.arange(64.0)
    save_checkpoint(path, {"iteration": 3, "w": weights})
    data = path.read_bytes()
    at = data.index(weights.numpy().tobytes()) + 4 * 17 + 3  # the exponent byte of w[17]
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:])
    assert not torch.equal(torch.load(path, weights_only=True)["w"], weights)  # a well-formed file
    with pytest.raises(RcigError, match=r"latest.pt is damaged") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_checkpoints_round_trip_without_their_checksum_and_older_ones_load_unchecked(tmp_path):
    from rcig.run.checkpoint import CHECKSUM, content_digest

    state = {"iteration": 3, "w": torch.arange(4.0), "rng": (1, (2, 3), None), "d": {1: "a", "b": [0.5]}}
    save_checkpoint(tmp_path / "new.pt", state)
    assert CHECKSUM in torch.load(tmp_path / "new.pt", weights_only=True)
    back = load_checkpoint(tmp_path / "new.pt")
    assert CHECKSUM not in back and content_digest(back) == content_digest(state)
    torch.save(state, tmp_path / "old.pt")  # as rcig wrote them before checksums
    assert load_checkpoint(tmp_path / "old.pt")["iteration"] == 3
    for changed in ({**state, "iteration": 4}, {**state, "w": torch.arange(4.0).double()},
                    {**state, "w": torch.arange(4.0).reshape(2, 2)}, {**state, "rng": [1, [2, 3], None]}):
        assert content_digest(changed) != content_digest(state)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_missing_corrupt_and_malicious_files_raise_one_line_rcig_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.arange(1000.0)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    listy = tmp_path / "list.pt"
    torch.save([1, 2], listy)
    for path in (tmp_path / "missing.pt", truncated, garbage, evil, listy):
        with pytest.raises(RcigError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value) and path.name in str(info.value)
    assert not (tmp_path / "pwned").exists()


def test_pool_state_with_other_adam_names_is_a_one_line_error():
    pool = ModelPool(lambda: nn.Linear(2, 1), 2, 0.01, 100, torch.Generator().manual_seed(0))
    state = pool.state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in pool.params(0).items()}
    state["members"] = [{"params": pool.params(i), "adam": {"t": 1, "m": zeros, "v": zeros}, "steps": 1, "seed": 5}
                        for i in range(2)]
    other = ModelPool(lambda: nn.Linear(2, 1), 2, 0.01, 100, torch.Generator().manual_seed(1))
    before = other.params(1)["weight"].clone()
    with pytest.raises(RcigError, match="not a checkpoint of this run"):
        other.load_state_dict(state)
    assert torch.equal(other.params(1)["weight"], before)  # a failed load changes nothing
