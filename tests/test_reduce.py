"""restore_ext.reduce (docs/ops.md §3b): base selection + restore_reduce, checked against the invariants of
docs/ops.md §3 and the reference; kept_count; reduce's argument checks."""
import pytest
import torch

import restore_ext
from restore_ext import reference
from restore_ext.reduction import kept_count

from conftest import DEVICES, DTYPES


def check_reduced(out, features, num_out):
    """docs/ops.md §3 invariants that hold whatever the base method chose."""
    b, n, d = features.shape
    tokens, size, position, source = (t.cpu() for t in out)
    f = features.cpu()
    assert tokens.shape == (b, num_out, d) and tokens.dtype == features.dtype
    assert size.shape == position.shape == (b, num_out) and source.shape == (b, n)
    assert size.dtype == position.dtype == source.dtype == torch.long
    assert torch.equal(size.sum(1), torch.full((b,), n))
    assert bool((size >= 1).all())
    assert bool((position.diff(dim=1) > 0).all()), "positions must strictly increase"
    assert int(source.min()) >= 0 and int(source.max()) < num_out
    for row in range(b):
        # every input token lands in exactly one output, and each output's members are what `size` says
        assert torch.equal(torch.bincount(source[row], minlength=num_out), size[row])
        for slot in range(num_out):
            members = torch.nonzero(source[row] == slot).flatten()
            assert int(position[row, slot]) == int(members[(members.numel() - 1) // 2])
            want = f[row, members].float().mean(0)
            torch.testing.assert_close(tokens[row, slot].float(), want, rtol=2e-2, atol=2e-2)
            if members.numel() == 1:  # a kept token (or an anchor alone) is the input token itself
                assert torch.equal(tokens[row, slot], f[row, members[0]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("base", ["divprune", "uniform", "cls"])
@pytest.mark.parametrize("n,num_out", [(2, 2), (40, 8), (576, 64), (576, 192)])
def test_reduce_invariants(device, base, n, num_out):
    g = torch.Generator().manual_seed(n + num_out)
    x = torch.randn(2, n, 32, generator=g)
    scores = torch.rand(2, n, generator=g)
    out = restore_ext.reduce(x.to(device), num_out, base=base, scores=scores.to(device))
    assert all(t.device.type == device for t in out)
    check_reduced(out, x, num_out)


@pytest.mark.parametrize("base", ["divprune", "uniform", "cls"])
@pytest.mark.parametrize("rule", ["reference", "dpc"])
def test_reduce_matches_reference(base, rule):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 60, 16, generator=g)
    scores = torch.rand(2, 60, generator=g)
    out = restore_ext.reduce(x, 20, base=base, keep_ratio=0.4, scores=scores, rule=rule)
    retained = restore_ext.select(x, kept_count(20, 0.4), base, scores)
    want = reference.restore_reduce(x, retained, 20, rule)
    assert torch.equal(out.size, want.size) and torch.equal(out.position, want.position)
    assert torch.equal(out.source, want.source)
    torch.testing.assert_close(out.tokens.double(), want.tokens, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_dtypes(dtype):
    x = torch.randn(3, 100, 24).to(dtype)
    out = restore_ext.reduce(x, 30)
    check_reduced(out, x, 30)


def test_reduce_callable_base():
    x = torch.randn(2, 50, 8)
    out = restore_ext.reduce(x, 10, base=lambda f, k: torch.arange(k).expand(f.shape[0], k))
    assert out.position[:, :5].tolist() == [[0, 1, 2, 3, 4]] * 2
    check_reduced(out, x, 10)


@pytest.mark.parametrize(
    "num_tokens,ratio,r", [(64, 0.5, 32), (192, 0.5, 96), (5, 0.5, 3), (7, 0.5, 4), (10, 0.25, 3), (3, 0.1, 0)]
)
def test_kept_count_rounds_half_up(num_tokens, ratio, r):
    assert kept_count(num_tokens, ratio) == r


def test_reduce_errors():
    x = torch.randn(2, 20, 4)
    with pytest.raises(ValueError, match=r"RESTORE needs 1 <= R < num_tokens = 8"):
        restore_ext.reduce(x, 8, keep_ratio=0.0)
    with pytest.raises(ValueError, match=r"RESTORE needs 1 <= R < num_tokens = 8"):
        restore_ext.reduce(x, 8, keep_ratio=1.0)
    with pytest.raises(ValueError, match=r"RESTORE needs 1 <= R < num_tokens = 3"):
        restore_ext.reduce(x, 3, keep_ratio=0.1)
    with pytest.raises(ValueError, match="keep_ratio must be a number in"):
        restore_ext.reduce(x, 8, keep_ratio=1.5)
    for bad in (1, 21, 0, 8.0):
        with pytest.raises(ValueError, match="num_tokens must be an int with 2 <= num_tokens <= N = 20"):
            restore_ext.reduce(x, bad)
    with pytest.raises(ValueError, match="base must be one of"):
        restore_ext.reduce(x, 8, base="tome")
    with pytest.raises(ValueError, match='base="cls" needs scores'):
        restore_ext.reduce(x, 8, base="cls")
    with pytest.raises(ValueError, match="features must be 3-D"):
        restore_ext.reduce(x[0], 8)
    with pytest.raises(RuntimeError, match='rule must be "reference" or "dpc"'):
        restore_ext.reduce(x, 8, rule="tome")
