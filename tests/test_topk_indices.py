"""topk_indices (docs/ops.md §1) against the float64 reference: exact index equality, since ranking is discrete."""
import math

import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, DTYPES

SHAPES = [(1, 1, 1), (2, 7, 1), (3, 7, 7), (4, 100, 37), (2, 576, 288), (1, 2880, 64), (3, 5000, 4999)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,k", SHAPES)
def test_matches_reference_random(device, dtype, b, n, k):
    scores = torch.randn(b, n, device=device).to(dtype)
    out = restore_ext.topk_indices(scores, k)
    assert out.dtype == torch.long and out.shape == (b, k) and out.device == scores.device
    torch.testing.assert_close(out.cpu(), ref.topk_indices(scores.cpu(), k), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_go_to_lower_index(device, dtype):
    # Few distinct values: nearly every choice at the boundary is a tie.
    scores = torch.randint(0, 4, (5, 300), device=device).to(dtype)
    for k in (1, 2, 77, 150, 299, 300):
        torch.testing.assert_close(restore_ext.topk_indices(scores, k).cpu(), ref.topk_indices(scores.cpu(), k))
    same = torch.zeros(2, 50, device=device, dtype=dtype)
    assert restore_ext.topk_indices(same, 10).tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_ranks_below_minus_inf_and_signed_zero_ties(device, dtype):
    row = [math.nan, -math.inf, 0.0, -0.0, math.inf, 1.0, math.nan, -1.0, -math.inf]
    scores = torch.tensor([row, row[::-1]], device=device).to(dtype)
    for k in range(1, len(row) + 1):
        out = restore_ext.topk_indices(scores, k).cpu()
        torch.testing.assert_close(out, ref.topk_indices(scores.cpu(), k))
    # The spelled-out order of row 0: inf(4), 1(5), 0(2), -0(3) tie -> lower first, -1(7), -inf(1), -inf(8), nan(0), nan(6)
    assert restore_ext.topk_indices(scores, 4)[0].tolist() == [2, 3, 4, 5]
    assert restore_ext.topk_indices(scores, 7)[0].tolist() == [1, 2, 3, 4, 5, 7, 8]
    assert restore_ext.topk_indices(scores, 8)[0].tolist() == [0, 1, 2, 3, 4, 5, 7, 8]


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_empty_batch(device):
    base = torch.randn(300, 6, device=device)
    scores = base.t()  # (6, 300) with stride (1, 6)
    assert not scores.is_contiguous()
    torch.testing.assert_close(restore_ext.topk_indices(scores, 40).cpu(), ref.topk_indices(scores.cpu(), 40))
    assert restore_ext.topk_indices(torch.randn(0, 5, device=device), 3).shape == (0, 3)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in [(torch.randn(3, 40, device=device), 5), (torch.randn(2, 9, device=device).half(), 9)]:
        torch.library.opcheck(torch.ops.restore.topk_indices.default, args)
