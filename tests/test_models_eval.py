"""Models per resolution, augmentations, the protocol's schedule and its score on digits."""

import math

import pytest
import torch

from rcig.data import prepare
from rcig.errors import RcigError
from rcig.evaluation import ProtocolSettings, augment_batch, evaluate_support, herding, learning_rate, random_real
from rcig.models import build_model


@pytest.mark.parametrize("arch", ["conv", "resnet18", "vgg11", "alexnet"])
@pytest.mark.parametrize("size,channels", [(8, 1), (28, 1), (32, 3), (64, 3), (128, 3)])
def test_model_output_shapes(arch, size, channels):
    depth = {8: 3, 28: 3, 32: 3, 64: 4, 128: 5}[size]
    model = build_model(arch, in_channels=channels, num_classes=7, image_size=size, depth=depth, width=8)
    logits, features = model(torch.randn(2, channels, size, size), return_features=True)
    # conv: the last block's width x (side / 2^depth)^2, the first conv padding gray images by 3
    conv_side = (size + 4 if channels == 1 else size) // 2 ** depth
    width = {"conv": 8 * 2 ** (depth - 1) * conv_side ** 2, "resnet18": 512, "vgg11": 512, "alexnet": 256}[arch]
    assert logits.shape == (2, 7) and features.shape == (2, width) and model.feature_dim == width
    assert model.classifier.out_features == 7


def test_one_depth_rule_for_the_presets_and_herding(monkeypatch):
    """The default preset's depth and herding's feature network follow depth_for_image_size
    (48 px: depth 3, as the presets have it)."""
    from types import SimpleNamespace

    import rcig.data.sampling as sampling
    from rcig.config import default_preset_name, depth_for_image_size, load_preset

    assert [depth_for_image_size(s) for s in (8, 28, 32, 48, 63, 64, 100, 128, 256)] == [3, 3, 3, 3, 3, 4, 4, 5, 5]
    for size in (28, 32, 48, 64, 96, 128):
        for channels in (1, 3):
            assert load_preset(default_preset_name(size, channels)).depth == depth_for_image_size(size)
    depths = []
    monkeypatch.setattr(sampling, "embed", lambda x, seed, depth, **_: depths.append(depth) or x.flatten(1))
    dataset = SimpleNamespace(num_classes=2, image_size=48, class_names=("a", "b"))
    prepared = SimpleNamespace(dataset=dataset, x_train=torch.randn(6, 3, 48, 48), y_train=torch.tensor([0, 1] * 3))
    herding(prepared, 2, seed=0)
    assert depths == [3, 3]


def test_a_baseline_set_records_the_protocol_of_the_papers_preset_for_its_shape():
    """Sets carry the protocol they are scored with by default: the paper preset's ConvNet for
    the shape (depth by :func:`depth_for_image_size`) and its test augmentations."""
    from rcig.config import TEST_AUGMENTATIONS, paper_preset
    from rcig.evaluation.baselines import baseline_set

    ds = baseline_set("digits", 1, method="random", seed=0)
    assert ds.meta["protocol"] == {"arch": "conv", "depth": 3, "width": 128, "augmentations": list(TEST_AUGMENTATIONS)}
    assert [paper_preset(size, 3).protocol()["depth"] for size in (32, 64, 128)] == [3, 4, 5]


def test_convnet_padding_rule_and_channel_plan():
    model = build_model("conv", in_channels=1, num_classes=10, image_size=28)
    assert model(torch.zeros(1, 1, 28, 28), return_features=True)[1].shape == (1, 512 * 4 * 4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 256, 512] and convs[0].padding == (3, 3)
    rgb = build_model("conv", in_channels=3, num_classes=10, image_size=32)
    assert [m for m in rgb.modules() if isinstance(m, torch.nn.Conv2d)][0].padding == (1, 1)


def test_softplus_approaches_relu():
    torch.manual_seed(0)
    relu = build_model("conv", in_channels=1, num_classes=3, image_size=8, width=4)
    soft = build_model("conv", in_channels=1, num_classes=3, image_size=8, width=4, activation="softplus", beta=1e4)
    soft.load_state_dict(relu.state_dict())
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(soft(x), relu(x), atol=1e-3, rtol=1e-3)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(RcigError, match="unknown architecture"):
        build_model("transformer", in_channels=1, num_classes=2, image_size=8)


def test_augmentations_seeded_one_per_image_and_range_preserving():
    x = torch.randn(64, 3, 16, 16)
    names = ("crop", "rotate", "translate", "cutout")
    a = augment_batch(x, names, torch.Generator().manual_seed(1))
    b = augment_batch(x, names, torch.Generator().manual_seed(1))
    c = augment_batch(x, names, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= min(x.min(), 0) - 1e-6 and a.max() <= max(x.max(), 0) + 1e-6
    flipped = augment_batch(x, ("flip",), torch.Generator().manual_seed(0))
    assert torch.equal(flipped, x.flip(-1))  # every image got the (only) transform
    # with two transforms, each image gets exactly one: flip or cutout, never both
    mixed = augment_batch(x, ("flip", "cutout"), torch.Generator().manual_seed(3))
    is_flip = (mixed == x.flip(-1)).flatten(1).all(1)
    has_hole = (mixed == 0).flatten(1).any(1)
    assert is_flip.any() and has_hole.any() and not (is_flip & has_hole).any()


def test_cutout_and_crop_magnitudes_match_the_reference_evaluation():
    x = torch.rand(200, 2, 28, 28) + 1.0  # no zeros of its own
    holes = (augment_batch(x, ("cutout",), torch.Generator().manual_seed(0)) == 0).all(1)  # (N, H, W)
    # every image: one 7 x 7 square (a quarter of the side), wholly inside the image
    assert (holes.flatten(1).sum(1) == 49).all()
    rows, cols = holes.any(2), holes.any(1)
    assert (rows.sum(1) == 7).all() and (cols.sum(1) == 7).all()
    # crop zooms in by a factor in [1, 1.25]: a horizontal ramp's slope (middle row, away from
    # the zero-filled border) shrinks by that factor
    ramp = torch.linspace(-1, 1, 28).view(1, 1, 1, 28).expand(200, 1, 28, 28).contiguous()
    cropped = augment_batch(ramp, ("crop",), torch.Generator().manual_seed(1))[:, 0, 14]
    slope = (cropped[:, 20] - cropped[:, 7]) / (ramp[0, 0, 14, 20] - ramp[0, 0, 14, 7])
    assert slope.min() >= 1 / 1.25 - 1e-3 and slope.max() <= 1 + 1e-3 and slope.min() < 0.85


def test_learning_rate_schedule_shape():
    peak, warm, decay = 1e-4, 500, 2000
    assert learning_rate(0, peak, warm, decay) == pytest.approx(peak / warm)
    assert learning_rate(warm - 1, peak, warm, decay) == pytest.approx(peak)
    mid = learning_rate((warm + decay) // 2, peak, warm, decay)
    assert mid == pytest.approx(0.01 * peak + 0.99 * peak * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-3)
    assert learning_rate(decay, peak, warm, decay) == pytest.approx(0.01 * peak)
    assert learning_rate(5000, peak, warm, decay) == pytest.approx(0.01 * peak)  # the no-aug tail


@pytest.fixture(scope="module")
def digits():
    return prepare("digits")


def test_baselines_are_class_balanced_and_seeded(digits):
    x, y = random_real(digits, 3, seed=0)
    assert x.shape == (30, 1, 8, 8) and torch.equal(y.argmax(1), torch.arange(10).repeat_interleave(3))
    assert torch.equal(random_real(digits, 3, 0)[0], x) and not torch.equal(random_real(digits, 3, 1)[0], x)
    assert y.sum(1).abs().max() < 1e-6  # centred one-hot
    with pytest.raises(RcigError, match="larger than class"):
        random_real(digits, 10_000, 0)


def test_herding_tracks_the_class_mean_better_than_random(digits):
    from rcig.data.sampling import embed

    xh, _ = herding(digits, 5, seed=0)
    gaps = {"herding": [], "random": []}
    for c in range(10):
        members = digits.x_train[digits.y_train == c]
        mu = embed(members, 0, 3).mean(0)
        gaps["herding"].append(float((embed(xh[c * 5:(c + 1) * 5], 0, 3).mean(0) - mu).norm()))
        xr, _ = random_real(digits, 5, seed=c)
        gaps["random"].append(float((embed(xr[c * 5:(c + 1) * 5], 0, 3).mean(0) - mu).norm()))
    assert sum(gaps["herding"]) < 0.7 * sum(gaps["random"])


def test_protocol_scores_random_real_digits_well_above_chance(digits):
    x, y = random_real(digits, 10, seed=0)
    settings = ProtocolSettings(n_models=2, steps=200, warmup=50, lr=1e-3, no_aug_extension=1.0, width=32, test_limit=200,
                                augmentations=("translate", "cutout"))
    scores = evaluate_support(x, y, digits.test_images(), digits.y_test, settings, progress=False)
    for name in ("no_aug", "aug"):
        assert scores[name]["mean"] > 0.6, scores  # chance is 0.1
        assert len(scores[name]["accs"]) == 2 and 0 <= scores[name]["std"] < 0.2


def _reference_protocol_training(images, labels, settings, augment, total_steps, decay_steps, seed):
    """The protocol's training written out plainly:
    the seeded network, channels-last, for-loop Adam, schedule set before every step, the
    batch and its transforms drawn from the network's own generator 10,000 + seed."""
    from rcig.evaluation.protocol import make_models

    model = make_models(settings, images.shape[1], labels.shape[1], images.shape[2], [seed])[0]
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, foreach=False)
    g = torch.Generator().manual_seed(10_000 + seed)
    x_all = images.contiguous(memory_format=torch.channels_last)
    for step in range(total_steps):
        x, y = x_all, labels
        if len(x) > settings.batch_size:
            idx = torch.randperm(len(x), generator=g)[:settings.batch_size]
            x, y = x[idx], y[idx]
        if augment:
            x = augment_batch(x, settings.augmentations, g)
        opt.param_groups[0]["lr"] = learning_rate(step, settings.lr, settings.warmup, decay_steps)
        opt.zero_grad()
        (0.5 * ((model(x) - y) ** 2).mean()).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("augment", [False, True])
def test_protocol_training_matches_the_plain_reference_per_network(digits, augment):
    """Same seeds, batches, transforms and schedule as the plain loop: weights and scores per
    network agree to float rounding (and the two seeds' networks differ)."""
    from rcig.evaluation import accuracy, train_models

    x, y = random_real(digits, 3, seed=1)  # 30 images, batch 16: the random-batch path too
    settings = ProtocolSettings(width=8, lr=3e-3, warmup=4, batch_size=16, augmentations=("crop", "rotate", "cutout"))
    seeds = [3, 4]
    models, diverged = train_models(x, y, settings, augment=augment, total_steps=12, decay_steps=8, seeds=seeds)
    assert diverged == [False, False]
    for seed, model in zip(seeds, models):
        ref = _reference_protocol_training(x, y, settings, augment, 12, 8, seed)
        for name, p in ref.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], p, rtol=1e-4, atol=1e-6, msg=name)
        scores = accuracy([model, ref], digits.test_images(), digits.y_test)
        assert abs(scores[0] - scores[1]) <= 1 / len(digits.y_test) + 1e-9
    assert (models[0].classifier.weight - models[1].classifier.weight).abs().max() > 1e-3


def test_a_preset_can_extend_the_papers_preset_for_the_datas_shape():
    import json
    from importlib import resources

    from rcig.config import load_preset, preset_names

    layered = [n for n in preset_names() if "extends" in json.loads(
        resources.files("rcig.presets").joinpath(f"{n}.json").read_text())]
    assert "fast" in layered
    for name in layered:
        changes = json.loads(resources.files("rcig.presets").joinpath(f"{name}.json").read_text())
        changes.pop("extends")
        for size, channels, base in ((28, 1, "depth_3_no_flip"), (32, 3, "depth_3"), (64, 3, "depth_4_200")):
            got, paper = load_preset(name, size, channels).to_dict(), load_preset(base).to_dict()
            assert {k for k in got if got[k] != paper[k]} <= set(changes)  # only what it lists changes
            assert all(got[k] == (list(v) if isinstance(v, tuple) else v) for k, v in changes.items())
        with pytest.raises(RcigError, match=f"preset {name} extends the paper's preset"):
            load_preset(name)


def test_networks_whose_loss_becomes_non_finite_are_reported_as_diverged(digits):
    """Images of magnitude 1e30 overflow the squared error: every network is marked diverged
    and stops early; a support that trains is marked so network by network."""
    from rcig.evaluation.protocol import DIVERGENCE_CHECK, evaluate_support, train_models

    x, y = random_real(digits, 1, seed=0)
    settings = ProtocolSettings(width=8, n_models=2, steps=20, warmup=4)
    huge = evaluate_support(x * 1e30, y, digits.test_images(), digits.y_test, settings, progress=False)
    assert huge["no_aug"]["diverged"] == [0, 1] and huge["aug"]["diverged"] == [0, 1]
    fine = evaluate_support(x, y, digits.test_images(), digits.y_test, settings, progress=False)
    assert fine["no_aug"]["diverged"] == [] and fine["aug"]["diverged"] == []

    class Count:
        n = calls = 0

        def update(self, k=1):
            self.n, self.calls = self.n + k, self.calls + 1

    counted = Count()
    trained = train_models(x * 1e30, y, settings, augment=False, total_steps=10 * DIVERGENCE_CHECK, decay_steps=20,
                           seeds=[0], progress=counted)
    assert trained.diverged == [True] and counted.n == 10 * DIVERGENCE_CHECK  # the bar still completes
    assert counted.calls == DIVERGENCE_CHECK + 1  # stopped at the first look, the rest in one update
    assert not all(torch.isfinite(p).all() for p in trained.models[0].parameters())


def test_summaries_leave_diverged_networks_out_of_the_mean():
    from rcig.evaluation.protocol import summarise

    assert summarise([0.8, 0.1, 0.6], [False, True, False]) == {"mean": 0.7, "std": pytest.approx(0.1), "accs": [0.8, 0.1, 0.6], "diverged": [1]}
    assert summarise([0.1, 0.1], [True, True])["mean"] == pytest.approx(0.1)
    assert summarise([0.5, 0.7])["diverged"] == [] and summarise([0.5, 0.7])["mean"] == pytest.approx(0.6)


def test_a_set_whose_every_network_diverges_has_no_score(tmp_path, capsys):
    """``rcig eval`` of a set of images of magnitude 1e30: one line, exit 2, no JSON; the
    table of ``--compare`` marks the diverged networks where some of them train."""
    from rcig.cli import main
    from rcig.evaluation import format_scores
    from rcig.evaluation.baselines import baseline_set
    from rcig.io import save

    ds = baseline_set("digits", 1, method="random", seed=0)
    ds.images *= 1e30
    save(ds, tmp_path / "huge.safetensors")
    code = main(["eval", str(tmp_path / "huge.safetensors"), "--models", "2", "--steps", "20", "--test-limit", "50",
                 "--json", str(tmp_path / "scores.json"), "--quiet"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rcig: error: ") and "diverged" in err[0], err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["huge.safetensors"]  # no JSON, no partial scores
    report = {"dataset": "digits", "ipc": 1, "method": "m", "arch": "conv", "models": 2, "seconds": 1.0,
              "no_aug": {"mean": 0.5, "std": 0.0, "accs": [0.5, 0.1], "diverged": [1]}}
    lines = format_scores(report)
    assert "[50.00 diverged]" in lines[1] and "1 of 2 networks diverged" in lines[1]
    grid = {**report, "arch": "conv", "compare": {"random": {"conv": {"no_aug": {**report["no_aug"], "diverged": []}}}}}
    assert any(line.startswith("distilled conv no_aug; 1 of 2 networks diverged") for line in format_scores(grid))


def test_the_progress_of_a_grid_names_each_set_and_architecture(digits, capsys):
    from rcig.evaluation.suite import score_grid

    supports = {"distilled": random_real(digits, 1, seed=0), "random": random_real(digits, 1, seed=1)}
    settings = ProtocolSettings(n_models=1, steps=2, warmup=1, width=8, test_limit=20, settings=("aug",))
    score_grid(supports, ("conv", "conv_bn"), settings, digits.test_images(), digits.y_test, flip=False, progress=True)
    names = [line.split(": ")[0].split(" ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert names == ["evaluate set (conv)", "evaluate set (conv_bn)", "evaluate random real (conv)",
                     "evaluate random real (conv_bn)"]


def test_eval_width_overrides_the_sets_protocol_width():
    from rcig.evaluation.suite import protocol_settings

    meta = {"protocol": {"arch": "conv", "depth": 3, "width": 64, "augmentations": ["crop"]}}
    assert protocol_settings(meta).width == 64  # the set's own: the distillation network's
    assert protocol_settings(meta, width=128).width == 128  # `rcig eval --width 128`: the paper's network
    assert protocol_settings({}).width == ProtocolSettings().width
