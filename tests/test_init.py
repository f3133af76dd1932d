"""The reference release's (flax) initialisation, and why it matters for RCIG's kernel scale."""

import math

import pytest
import torch

from rcig.models import build_model
from rcig.models.init import apply_init, lecun_normal_, reference_init_


def test_lecun_normal_has_variance_one_over_fan_in_and_is_truncated_at_two_std():
    torch.manual_seed(0)
    w = lecun_normal_(torch.empty(256, 64, 3, 3))  # fan_in 576
    fan_in = 64 * 9
    assert w.var().item() == pytest.approx(1.0 / fan_in, rel=0.02)
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    assert w.abs().max().item() <= 2 * std + 1e-7
    assert w.abs().max().item() > 1.9 * std  # the tails are there, only cut at 2 std
    dense = lecun_normal_(torch.empty(10, 4096))
    assert dense.var().item() == pytest.approx(1.0 / 4096, rel=0.05)


def test_reference_init_zeroes_biases_and_changes_every_kernel():
    torch.manual_seed(0)
    model = build_model("conv", in_channels=1, num_classes=10, image_size=28, width=16)
    before = {k: v.clone() for k, v in model.named_parameters()}
    reference_init_(model)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            assert not torch.equal(p, before[name]), name
    with pytest.raises(ValueError, match="unknown init"):
        apply_init(model, "xavier")


def test_reference_init_gives_a_much_larger_feature_kernel_than_torch_defaults():
    """Depth 3: each layer's kernel variance is 3x torch's, so K = phi phi^T grows ~27x."""
    x = torch.randn(16, 1, 28, 28)
    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model("conv", in_channels=1, num_classes=10, image_size=28, width=32)
        with torch.no_grad():
            k_torch = model(x, return_features=True)[1].square().sum(1).mean()
        reference_init_(model)
        with torch.no_grad():
            k_ref = model(x, return_features=True)[1].square().sum(1).mean()
        ratios.append(float(k_ref / k_torch))
    assert 10 < sum(ratios) / 3 < 80


def test_protocol_init_setting_changes_the_networks():
    from rcig.evaluation.protocol import ProtocolSettings, make_models

    torch_nets = make_models(ProtocolSettings(width=8, init="torch"), 1, 10, 8, [0])
    ref_nets = make_models(ProtocolSettings(width=8), 1, 10, 8, [0])  # the default: the reference's init
    assert torch.count_nonzero(torch_nets[0].classifier.bias) > 0
    assert torch.count_nonzero(ref_nets[0].classifier.bias) == 0
