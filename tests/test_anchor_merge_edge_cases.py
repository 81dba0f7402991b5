"""anchor_merge (docs/ops.md §2) on features near the float32 limit (issue 14, item 7): the cluster sum
overflowed to inf although every cluster's mean is finite."""
import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES

SCALE = 2.0**126  # exact in float32 and bfloat16: scaling by it changes no rounding, only the exponent


def clustered(b, n, d, seed):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, d, generator=gen) * 3
    x = centers[torch.randint(0, 4, (b, n), generator=gen)] + torch.randn(b, n, d, generator=gen)
    return x / x.abs().amax() * 3.9  # |x| <= 3.9: times 2^126 that is ~3.3e38, below the float32 max 3.4e38


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # float16's max is 65504: sums stay finite
@pytest.mark.parametrize("rule", ["reference", "dpc"])
def test_features_near_float32_limit_give_finite_means(rule, dtype, device):
    x_small = clustered(2, 96, 24, seed=5).to(dtype)
    x = x_small * SCALE
    assert torch.isfinite(x).all() and x.abs().amax() > 3e38
    out = restore_ext.anchor_merge(x.to(device), 8, rule)
    assert torch.isfinite(out.merged).all(), "cluster means overflowed"

    # Power-of-two scaling leaves every cosine similarity, and so every decision, bit for bit as it was; each
    # mean scales exactly with it.
    small = restore_ext.anchor_merge(x_small.to(device), 8, rule)
    for name in ("anchors", "assign", "size"):
        assert torch.equal(getattr(out, name), getattr(small, name)), name
    assert torch.equal(out.merged.cpu().double(), small.merged.cpu().double() * SCALE)

    # The mean of each slot's members, in float64, rounded once, as the float64 reference does.
    exp = ref.anchor_merge(x, 8, rule)
    assert torch.equal(out.anchors.cpu(), exp.anchors) and torch.equal(out.assign.cpu(), exp.assign)
    rtol = 1.3e-6 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(out.merged.cpu().double(), exp.merged, rtol=rtol, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_one_cluster_of_maximal_features(device):
    """Every token at the float32 maximum: one cluster whose sum is N times that, mean exactly the maximum."""
    fmax = torch.finfo(torch.float32).max
    x = torch.full((1, 50, 4), fmax)
    x[0, :, 1] = -fmax
    out = restore_ext.anchor_merge(x.to(device), 1)
    assert out.size.tolist() == [[50]]
    assert torch.equal(out.merged.cpu(), x[:, :1])
