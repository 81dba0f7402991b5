"""divprune_indices (CPU and, where a GPU is visible, CUDA) against the float64 DivPrune greedy (docs/ops.md §1b)."""
import pytest
import torch

import restore_ext
from restore_ext import reference

from conftest import DEVICES, DTYPES, assert_divprune_exact_or_close


def features(kind, b, n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(b, n, d, generator=g)
    elif kind == "clustered":  # a few far-apart directions, tokens near them
        centres = torch.randn(b, 8, d, generator=g) * 4
        which = torch.randint(0, 8, (b, n), generator=g)
        x = centres.gather(1, which[:, :, None].expand(b, n, d)) + 0.3 * torch.randn(b, n, d, generator=g)
    elif kind == "zeros":  # random with every 7th token the zero vector (cos 0 to everything)
        x = torch.randn(b, n, d, generator=g)
        x[:, ::7] = 0
    else:
        raise ValueError(kind)
    return x.to(dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 2, 576, 2880])
@pytest.mark.parametrize("kind", ["random", "clustered", "zeros"])
def test_matches_reference(device, n, kind):
    d = 64 if n <= 576 else 32
    x = features(kind, 2, n, d, seed=n + len(kind))
    for k in sorted({1, max(1, n // 2), n}):
        if n == 2880 and k == n // 2:
            k = 300  # the float64 replay of 1440 steps is slow in Python; 300 steps exercise the same code
        got = restore_ext.divprune_indices(x.to(device), k)
        assert got.device.type == device
        assert_divprune_exact_or_close(got, x, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(device, dtype):
    x = features("random", 3, 200, 48, seed=1, dtype=dtype)
    got = restore_ext.divprune_indices(x.to(device), 50)
    assert_divprune_exact_or_close(got, x, 50, tol=1e-5)  # the reference reads the same low-precision values


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_independent(device):
    x = features("random", 4, 150, 32, seed=2)
    x[2] = x[2].flip(0)  # different data per row, one row a permutation of another's input
    got = restore_ext.divprune_indices(x.to(device), 40).cpu()
    for row in range(4):
        assert torch.equal(got[row : row + 1], restore_ext.divprune_indices(x[row : row + 1].to(device), 40).cpu())
    assert_divprune_exact_or_close(got, x, 40)


@pytest.mark.parametrize("device", DEVICES)
def test_duplicates_tie_to_lower_index(device):
    base = features("random", 1, 60, 16, seed=3)
    x = torch.cat([base, base], dim=1)  # token i and i + 60 are identical
    for k in (1, 10, 60):
        got = restore_ext.divprune_indices(x.to(device), k).cpu()
        # Twins have bit-identical similarities to everything, so of two equally good twins the lower copy wins;
        # a twin of a chosen token is at distance ~0 from the set and loses to every fresh token. (Which twin
        # pair goes first is decided by rounding: 1 - ||xn||^2 is 0 only up to rounding, in float64 too.)
        assert int(got.max()) < 60, got
        assert got.unique().numel() == k
    same = torch.randn(1, 1, 8).expand(1, 30, 8).contiguous()  # all tokens identical: every step is a full tie
    assert torch.equal(restore_ext.divprune_indices(same.to(device), 12).cpu(), torch.arange(12)[None])


@pytest.mark.parametrize("device", DEVICES)
def test_zero_vectors(device):
    x = torch.zeros(1, 10, 4)
    x[0, 3] = torch.tensor([1.0, 0, 0, 0])
    x[0, 7] = torch.tensor([-1.0, 0, 0, 0])
    # Zero tokens are at distance 1 from everything; 3 and 7 are at distance 2 from each other but 1 from the
    # zeros, so every token's nearest other is at distance 1 (tokens 0.. tie, 0 first), then 7 and 3 (distance
    # 1 from token 0, ties to 3 first, then 7 at 2 from... ) -- the reference is the judge.
    for k in (1, 2, 3, 5, 10):
        got = restore_ext.divprune_indices(x.to(device), k).cpu()
        assert torch.equal(got, reference.divprune_indices(x, k)), (k, got)


def test_opcheck():
    x = features("random", 2, 40, 16, seed=4)
    torch.library.opcheck(torch.ops.restore.divprune_indices.default, (x, 7))
    torch.library.opcheck(torch.ops.restore.divprune_indices.default, (x.half(), 40))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs(device):
    x = torch.randn(2, 10, 4, device=device)
    with pytest.raises(RuntimeError, match="divprune_indices: x must be 3-D"):
        restore_ext.divprune_indices(x[0], 2)
    with pytest.raises(RuntimeError, match="divprune_indices: x must be float16, bfloat16 or float32"):
        restore_ext.divprune_indices(x.double(), 2)
    for k in (0, 11):
        with pytest.raises(RuntimeError, match="divprune_indices: k must satisfy 1 <= k <= N = 10"):
            restore_ext.divprune_indices(x, k)
    with pytest.raises(RuntimeError, match="feature dim D >= 1"):
        restore_ext.divprune_indices(torch.randn(1, 3, 0, device=device), 1)


def test_empty_batch():
    assert restore_ext.divprune_indices(torch.randn(0, 5, 3), 2).shape == (0, 2)
