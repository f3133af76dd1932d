"""Every part on the device of ``RCIG_TEST_DEVICE`` against the CPU: distillation, resume
across devices, evaluation, herding, augmentations. benchmarks/gpu_check.py sets it to cuda;
without it (the CPU alone) there is nothing to compare and the module is skipped: that a
seed gives one run is test_distill's, that a resume continues a run exactly is test_resume's."""

import os

import pytest
import torch

from conftest import TINY
from rcig import parallel

DEVICE = parallel.resolve_device(os.environ.get("RCIG_TEST_DEVICE", "cpu"))
CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(DEVICE.type == "cpu", reason="compares a device with the CPU: set RCIG_TEST_DEVICE "
                                "(benchmarks/gpu_check.py)")


def test_distillation_on_the_device_follows_the_cpu_run(tmp_path):
    """Same seed: the same draws (CPU generators) and, up to the device's float arithmetic,
    the same support; each AdaBelief step moves a pixel by at most ~proto_lr."""
    from rcig.run.driver import distill

    steps = 2
    here = distill("digits", 1, steps=steps, seed=1, out=tmp_path / "dev", overrides=TINY, progress=False,
                   device=str(DEVICE), checkpoint_every=1)
    cpu = distill("digits", 1, steps=steps, seed=1, overrides=TINY, progress=False, device="cpu")
    assert here.images.device == CPU  # a set file's arrays live on the CPU
    assert (here.images - cpu.images).abs().max() <= 2 * 0.003 * steps
    state = torch.load(tmp_path / "dev" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["support"]["x"].device == CPU  # map_location: a checkpoint loads anywhere


def test_resume_on_another_device_continues_the_run(tmp_path):
    from rcig.run.driver import distill

    other = "cpu"
    whole = distill("digits", 1, steps=3, seed=2, out=tmp_path / "a", overrides=TINY, progress=False,
                    device=str(DEVICE))
    distill("digits", 1, steps=2, seed=2, out=tmp_path / "b", overrides=TINY, progress=False, device=str(DEVICE),
            checkpoint_every=1)
    resumed = distill(out=tmp_path / "b", resume=True, steps=3, progress=False, device=other)
    assert (resumed.images - whole.images).abs().max() <= 2 * 0.003


def test_evaluation_herding_and_augmentation_on_the_device():
    from rcig.evaluation.baselines import baseline_set
    from rcig.data import prepare
    from rcig.evaluation import ProtocolSettings, evaluate_support
    from rcig.augment import augment_batch

    herded = baseline_set("digits", 2, method="herding", seed=0, device=DEVICE)
    assert herded.images.device == CPU
    # the same images chosen on the device as on the CPU
    assert torch.equal(herded.images, baseline_set("digits", 2, method="herding", seed=0).images)
    prepared = prepare("digits")
    settings = ProtocolSettings(width=16, n_models=1, steps=20, warmup=5, test_limit=100,
                                augmentations=("crop", "rotate", "translate", "cutout"))
    scores = evaluate_support(herded.images.to(DEVICE), herded.labels, prepared.test_images(), prepared.y_test, settings,
                              progress=False, team=parallel.Team(0, 1, DEVICE))
    assert set(scores) == {"no_aug", "aug"} and 0 <= scores["aug"]["mean"] <= 1
    x = torch.randn(16, 3, 8, 8, device=DEVICE)
    out = augment_batch(x, ("flip", "color", "crop", "rotate", "translate", "cutout"), torch.Generator().manual_seed(0))
    assert out.device == x.device and out.shape == x.shape and not torch.equal(out, x)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="auto picks CUDA alone")
def test_auto_takes_the_gpu():
    assert parallel.resolve_device("auto").type == "cuda"
