"""restore_reduce (docs/ops.md §3) against the float64 reference, its input checks, and meta tensors."""
import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, DTYPES, decisions_well_separated


def reduce_inputs(b, n, d, r, num_out, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(50):
        x = torch.randn(b, n, d, generator=gen).to(dtype)
        retained = torch.stack([torch.randperm(n, generator=gen)[:r] for _ in range(b)])
        rest = [[i for i in range(n) if i not in set(row.tolist())] for row in retained]
        rest_x = torch.stack([x[i, rest[i]] for i in range(b)])
        if decisions_well_separated(rest_x, num_out - r, "reference"):
            return x.to(device), retained.to(device)
    pytest.fail("no input with clear decision margins")


def check_invariants(out, n, num_out):
    b = out.tokens.shape[0]
    assert out.tokens.shape[:2] == out.size.shape == out.position.shape == (b, num_out)
    assert out.source.shape == (b, n)
    assert (out.size.sum(1) == n).all() and (out.size >= 1).all()
    assert (out.position.diff(dim=1) > 0).all(), "positions strictly increase"
    counts = torch.zeros_like(out.size).scatter_add_(1, out.source, torch.ones_like(out.source))
    assert torch.equal(counts, out.size), "every input lands in exactly one output, sizes count them"
    # Each output's position is one of its members' original indices.
    assert torch.equal(out.source.gather(1, out.position), torch.arange(num_out).expand(b, num_out).to(out.source))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d,r,num_out", [(1, 2, 4, 1, 2), (2, 20, 8, 3, 9), (2, 144, 32, 16, 32), (1, 576, 64, 32, 64)])
def test_matches_reference(device, dtype, b, n, d, r, num_out):
    x, retained = reduce_inputs(b, n, d, r, num_out, dtype, device)
    out = restore_ext.restore_reduce(x, retained, num_out)
    exp = ref.restore_reduce(x.cpu(), retained.cpu(), num_out)
    check_invariants(out, n, num_out)
    for name in ("size", "position", "source"):
        torch.testing.assert_close(getattr(out, name).cpu(), getattr(exp, name), rtol=0, atol=0, msg=name)
    torch.testing.assert_close(out.tokens.cpu().double(), exp.tokens.double(), rtol=2e-2 if dtype != torch.float32 else 1e-5, atol=1e-5)
    # retained tokens pass through bit for bit
    kept = out.size == 1
    torch.testing.assert_close(out.tokens[kept], x.gather(1, out.position[:, :, None].expand_as(out.tokens))[kept], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_unsorted_int32_retained_and_full_budget(device):
    x, retained = reduce_inputs(3, 50, 8, 10, 50, torch.float32, device, seed=3)
    out = restore_ext.restore_reduce(x, retained.int(), 50)  # num_out = N: nothing merges
    check_invariants(out, 50, 50)
    assert out.position.tolist() == [list(range(50))] * 3
    torch.testing.assert_close(out.tokens, x)


def test_checks_retained_on_cpu():
    x = torch.randn(1, 10, 4)
    with pytest.raises(ValueError, match=r"retained indices must lie in \[0, N = 10\)"):
        restore_ext.restore_reduce(x, torch.tensor([[0, 10]]), 4)
    with pytest.raises(ValueError, match="distinct"):
        restore_ext.restore_reduce(x, torch.tensor([[3, 3]]), 4)


@pytest.mark.parametrize("num_out", [4, 10])
def test_meta_tensors_give_shapes_without_reading_values(num_out):
    """Meta tensors have shapes and no values (tracing, shape inference): restore_reduce checks the shapes, skips
    the index checks that would read values (it used to fail with "Tensor.item() cannot be called on meta
    tensors") and returns meta tensors of the shapes a real call returns."""
    x = torch.empty(2, 10, 4, device="meta")
    retained = torch.empty(2, 3, dtype=torch.long, device="meta")
    out = restore_ext.restore_reduce(x, retained, num_out)
    real = restore_ext.restore_reduce(torch.randn(2, 10, 4), torch.tensor([[0, 4, 9], [1, 2, 3]]), num_out)
    for got, want in zip(out, real):
        assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype
    with pytest.raises(ValueError, match=r"num_out must satisfy R = 3 < num_out <= N = 10, got num_out = 11"):
        restore_ext.restore_reduce(x, retained, 11)  # shapes are still checked
    with pytest.raises(ValueError, match=r"retained must have shape \(B, R\) with B = 2"):
        restore_ext.restore_reduce(x, retained[:1], 4)
    out = restore_ext.reduce(x, 6, base="uniform")  # the whole reduce too, with a selector that reads no values
    assert out.tokens.is_meta and out.tokens.shape == (2, 6, 4) and out.source.shape == (2, 10)
    out = restore_ext.reduce(x, 6, base=lambda f, k: torch.empty(f.shape[0], k, dtype=torch.long, device="meta"))
    assert out.position.is_meta and out.position.shape == (2, 6)  # a callable base's output: shape-checked only


def test_num_out_must_be_an_int():
    x, retained = torch.randn(1, 10, 4), torch.tensor([[0, 1]])
    for bad in (4.0, 4.5, "4", None):
        with pytest.raises(ValueError, match=r"restore_reduce: num_out must satisfy R = 2 < num_out <= N = 10"):
            restore_ext.restore_reduce(x, retained, bad)
    assert restore_ext.restore_reduce(x, retained, torch.tensor(4)).size.shape == (1, 4)
