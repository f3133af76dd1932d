"""Distribution Matching (rcig.evaluation.dm): the matching loss and its gradient against
float64 oracles, the Siamese augmentation, that DM learns, its budget, its seeding, and
``rcig baseline --method dm`` end to end with its one-line errors."""

import time

import pytest
import torch

from conftest import run
from rcig.augment import augment_alike
from rcig.config import AUGMENTATIONS
from rcig.data import prepare
from rcig.data.sampling import centred_one_hot, class_members
from rcig.evaluation.baselines import dm, random_real
from rcig.evaluation.dm import DMSettings, embedding_network, matching_loss
from rcig.io import load
from rcig.models import build_model

TINY_DM = DMSettings(iterations=20, width=8, real_batch=32)  # digits in well under a second


@pytest.fixture(scope="module")
def digits():
    return prepare("digits")


def smooth_embedding():
    """A tiny float64 ConvNet's features (softplus: finite differences see no kinks)."""
    torch.manual_seed(0)
    net = build_model("conv", in_channels=2, num_classes=3, image_size=6, depth=1, width=3,
                      activation="softplus", beta=2.0).double()
    return net.requires_grad_(False).features


def tiny_problem():
    g = torch.Generator().manual_seed(1)
    real = [torch.randn(3 + c, 2, 6, 6, generator=g, dtype=torch.float64) for c in range(2)]
    synthetic = torch.randn(4, 2, 6, 6, generator=g, dtype=torch.float64)
    return real, synthetic


def test_matching_loss_is_the_linear_kernel_mmd_between_class_embeddings():
    """||mean a - mean b||^2 = mean <a_i, a_j> - 2 mean <a_i, b_j> + mean <b_i, b_j>, summed over classes."""
    embed = smooth_embedding()
    real, synthetic = tiny_problem()
    want = 0.0
    for c in range(2):
        a, b = embed(real[c]), embed(synthetic[2 * c:2 * c + 2])
        want += float((a @ a.T).mean() - 2 * (a @ b.T).mean() + (b @ b.T).mean())
    got = matching_loss(embed, real, [synthetic[:2], synthetic[2:]])
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("transform", AUGMENTATIONS)
def test_the_gradient_reaches_the_images_through_each_augmentation(transform):
    """dL/dS by autograd against central differences, in float64, through augment_alike."""
    embed = smooth_embedding()
    real, synthetic = tiny_problem()

    def loss(images):
        pairs = [augment_alike([real[c], images[2 * c:2 * c + 2]], (transform,), torch.Generator().manual_seed(7))
                 for c in range(2)]
        return matching_loss(embed, [p[0] for p in pairs], [p[1] for p in pairs])

    x = synthetic.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    assert grad.abs().sum() > 0
    numeric = torch.zeros_like(synthetic)
    eps = 1e-6
    for i in range(synthetic.numel()):
        step = torch.zeros(synthetic.numel(), dtype=torch.float64)
        step[i] = eps
        step = step.view_as(synthetic)
        numeric.view(-1)[i] = (loss(synthetic + step) - loss(synthetic - step)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("transform", AUGMENTATIONS)
def test_augment_alike_sees_every_batch_through_one_draw(transform):
    """Two batches augmented alike are the one concatenated batch augmented alike: one
    transform and one draw of its parameters for all images (copies come out equal)."""
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x[4] = x[0]
    first, second = augment_alike([x[:2], x[2:]], (transform,), torch.Generator().manual_seed(11))
    (whole,) = augment_alike([x], (transform,), torch.Generator().manual_seed(11))
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(second[2], first[0], rtol=0, atol=1e-6)
    assert not torch.equal(whole, x)


def test_the_embedding_network_is_the_papers_convnet():
    """Depth 3, 128 channels in every block, each conv followed by an instance norm (a GroupNorm
    of one channel per group), ReLU and average pooling; torch's default init (every kernel
    within +-1/sqrt(fan_in)); features of 128 channels of the last block; a fresh network per seed."""
    embed = embedding_network(DMSettings(), 1, 10, 28, 5, torch.device("cpu"))
    body = list(embed.__self__.body)
    assert [type(m).__name__ for m in body] == ["Conv2d", "GroupNorm", "ReLU", "AvgPool2d"] * 3
    convs, norms = body[0::4], body[1::4]
    assert [c.out_channels for c in convs] == [128, 128, 128]
    assert all(n.num_groups == n.num_channels == 128 and n.affine for n in norms)
    assert all(float(c.weight.abs().max()) * c.weight[0].numel() ** 0.5 <= 1.0 for c in convs)
    assert embed(torch.zeros(2, 1, 28, 28)).shape == (2, 128 * 4 * 4)
    other = embedding_network(DMSettings(), 1, 10, 28, 6, torch.device("cpu"))
    assert not torch.equal(convs[0].weight, other.__self__.body[0].weight)


def test_dm_learns_on_digits(digits):
    """After 20 iterations the matching loss over fixed networks and whole classes (no
    augmentation) is lower than at the random-real start, for several seeds."""
    k = digits.dataset.num_classes
    pools = [digits.x_train[m] for m in class_members(digits.y_train, k, 1)]

    def expected_loss(images):
        return sum(float(matching_loss(embedding_network(TINY_DM, 1, k, 8, 1000 + s, torch.device("cpu")), pools,
                                       list(images.split(1)))) for s in range(4))

    for seed in (0, 1):
        start, _ = random_real(digits, 1, seed)
        result = dm(digits, 1, seed, TINY_DM)
        assert result.iterations == 20 and len(result.losses) == 20
        assert expected_loss(result.images) < 0.85 * expected_loss(start), seed


def test_dm_starts_from_random_real_images_and_keeps_hard_labels(digits):
    start, labels = random_real(digits, 2, 5)
    still = dm(digits, 2, 5, TINY_DM._replace(iterations=2, lr=0.0))
    assert torch.equal(still.images, start)
    assert torch.equal(still.labels, labels)
    assert torch.equal(labels, centred_one_hot(torch.arange(10).repeat_interleave(2), 10))


def test_same_seed_same_set_and_another_seed_another(digits):
    a = dm(digits, 1, 3, TINY_DM._replace(iterations=3))
    b = dm(digits, 1, 3, TINY_DM._replace(iterations=3))
    c = dm(digits, 1, 4, TINY_DM._replace(iterations=3))
    assert torch.equal(a.images, b.images) and a.losses == b.losses
    assert not torch.equal(a.images, c.images)


def test_the_budget_stops_it(digits):
    """A budget already spent still runs one iteration; a short one stops long before the cap."""
    spent = dm(digits, 1, 0, TINY_DM._replace(iterations=1000), max_minutes=1.0,
                                  began=time.perf_counter() - 120)
    assert spent.iterations == 1
    started = time.perf_counter()
    short = dm(digits, 1, 0, TINY_DM._replace(iterations=100_000, width=4, real_batch=8), max_minutes=0.1)
    assert 1 < short.iterations < 100_000
    assert time.perf_counter() - started < 30


def test_rcig_baseline_dm_records_method_iterations_and_cost(tmp_path, capsys):
    out = tmp_path / "dm.safetensors"
    code, said, _ = run(["baseline", "--method", "dm", "--ipc", "1", "--steps", "1", "--out", out], capsys)
    assert code == 0 and "1 iteration" in said
    ds = load(out)
    assert ds.meta["method"] == "dm" and ds.images.shape == (10, 1, 8, 8)
    dm = ds.meta["dm"]
    assert dm["iterations"] == 1 and dm["max_iterations"] == 1 and dm["max_minutes"] is None
    assert (dm["lr"], dm["momentum"], dm["real_batch"]) == (1.0, 0.5, 256)
    assert (dm["depth"], dm["width"], dm["norm"]) == (ds.meta["protocol"]["depth"], 128, "instance")
    assert ds.meta["cost"]["cpu_seconds"] > 0 and ds.meta["cost"]["seconds"] > 0


class Killed(Exception):
    pass


def test_a_run_gone_on_from_its_progress_is_the_run_never_stopped(digits):
    settings = TINY_DM._replace(iterations=6)
    whole = dm(digits, 1, 2, settings)
    kept = []

    def keep_then_die(progress):
        kept.append(progress)
        if progress.state.iteration == 3:
            raise Killed

    with pytest.raises(Killed):
        dm(digits, 1, 2, settings, keep=keep_then_die, keep_every=0)
    assert [p.state.iteration for p in kept] == [1, 2, 3]
    went_on = dm(digits, 1, 2, settings, start=kept[-1])
    assert torch.equal(went_on.images, whole.images) and went_on.losses == whole.losses and went_on.iterations == 6


def step_doing(step, at: int, act):
    """``step`` (DM's) calling ``act()`` first at its ``at``-th call (an exception stops it there)."""
    calls = []

    def stepping(*args):
        calls.append(1)
        if len(calls) == at:
            act()
        return step(*args)

    return stepping


def test_rcig_baseline_dm_goes_on_after_a_kill_and_refuses_another_runs_progress(tmp_path, capsys, monkeypatch):
    import rcig.evaluation.dm as dm_module

    straight = tmp_path / "straight.safetensors"
    assert run(["baseline", "--method", "dm", "--steps", "4", "--out", straight], capsys)[0] == 0
    out = tmp_path / "dm.safetensors"
    real_step = dm_module.dm_step

    def die():
        raise KeyboardInterrupt  # a signal: the process ends, its progress file stays

    monkeypatch.setattr(dm_module, "KEEP_EVERY", 0.0)
    monkeypatch.setattr(dm_module, "dm_step", step_doing(real_step, 3, die))
    assert run(["baseline", "--method", "dm", "--steps", "4", "--out", out], capsys)[0] != 0
    partial = tmp_path / "dm.safetensors.partial.pt"
    assert partial.exists() and not out.exists()
    monkeypatch.setattr(dm_module, "dm_step", real_step)
    code, _, err = run(["baseline", "--method", "dm", "--steps", "4", "--seed", "1", "--out", out], capsys)
    assert code == 2 and "holds an unfinished DM run with another seed" in err and partial.exists()
    code, said, err = run(["baseline", "--method", "dm", "--steps", "4", "--out", out], capsys)
    assert code == 0 and "going on from" in err and "iteration 2" in err and "4 iterations" in said
    assert torch.equal(load(out).images, load(straight).images) and not partial.exists()
    assert load(out).meta["dm"]["iterations"] == 4


def test_rcig_baseline_dm_keeps_its_progress_on_a_stop_signal(tmp_path, capsys, monkeypatch):
    """SIGTERM (a scheduler's preemption) mid-run: the iteration in flight ends, the progress is
    kept at once (not a minute later), the exit status is 143, and the same command goes on."""
    import os
    import signal

    import rcig.evaluation.dm as dm_module

    straight = tmp_path / "straight.safetensors"
    assert run(["baseline", "--method", "dm", "--steps", "5", "--out", straight], capsys)[0] == 0
    out = tmp_path / "dm.safetensors"
    real_step = dm_module.dm_step
    monkeypatch.setattr(dm_module, "dm_step", step_doing(real_step, 3, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    code, _, err = run(["baseline", "--method", "dm", "--steps", "5", "--out", out], capsys)
    partial = tmp_path / "dm.safetensors.partial.pt"
    assert code == 143 and "stopped by SIGTERM at iteration 3" in err and str(partial) in err
    assert partial.exists() and not out.exists()
    monkeypatch.setattr(dm_module, "dm_step", real_step)
    code, said, err = run(["baseline", "--method", "dm", "--steps", "5", "--out", out], capsys)
    assert code == 0 and "iteration 3" in err and "5 iterations" in said
    assert torch.equal(load(out).images, load(straight).images) and not partial.exists()


@pytest.mark.parametrize("argv, message", [
    (["--method", "random", "--steps", "3"], "apply to --method dm"),
    (["--method", "herding", "--max-minutes", "1"], "apply to --method dm"),
    (["--method", "dm", "--max-minutes", "0"], "minutes > 0"),
    (["--method", "dm", "--max-minutes", "nan"], "minutes > 0"),
    (["--method", "dm", "--steps", "0"], "positive integer"),
    (["--method", "dm", "--ipc", "500"], "larger than class"),
    (["--method", "kmeans"], "invalid choice"),
])
def test_bad_dm_arguments_are_one_line_errors(argv, message, tmp_path, capsys):
    code, _, err = run(["baseline", *argv, "--out", tmp_path / "x.safetensors"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rcig: error:"), (code, err)
    assert message in lines[0]
    assert not (tmp_path / "x.safetensors").exists()
