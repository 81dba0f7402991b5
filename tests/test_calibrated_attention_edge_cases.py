"""calibrated_attention (docs/ops.md §5) on inputs probing found wrong (issue 14, items 1 and 5): K or V views
BLAS cannot read as they are, log_size values that would make the output NaN, positions at the ends of int64."""
import math

import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, DTYPES, eager_same_precision, fa_tolerance_check, run_isolated

INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)


def kv_view(kind, b, lk, hkv, dh, dtype, gen):
    """A (b, lk, hkv, dh) view with a contiguous last dim but unusual strides along L."""
    if kind == "expanded":  # stride 0 along L: every key is the same row
        return torch.randn(b, 1, hkv, dh, generator=gen).to(dtype).expand(b, lk, hkv, dh)
    if kind == "transposed":  # a (B, H, L, Dh) tensor seen as (B, L, H, Dh)
        return torch.randn(b, hkv, lk, dh, generator=gen).to(dtype).transpose(1, 2)
    if kind == "sliced":  # every other row of a longer sequence, and half the heads
        return torch.randn(b, 2 * lk, 2 * hkv, dh, generator=gen).to(dtype)[:, ::2, ::2]
    if kind == "overlapping":  # stride 1 along L: row j starts one element after row j-1 (stride below Dh)
        base = torch.randn(b * hkv * (lk + dh), generator=gen).to(dtype)
        return base.as_strided((b, lk, hkv, dh), (hkv * (lk + dh), 1, lk + dh, 1))
    if kind == "length_one":  # Lk = 1 with a stride 0 along L: counts as contiguous, yet no valid BLAS ld
        return torch.randn(b, 1, hkv, dh, generator=gen).to(dtype).as_strided((b, 1, hkv, dh), (hkv * dh, 0, dh, 1))
    raise ValueError(kind)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", ["k", "v", "kv"])
@pytest.mark.parametrize("kind", ["expanded", "transposed", "sliced", "overlapping", "length_one"])
def test_unusual_kv_strides_match_reference(kind, which, dtype, device, capfd):
    """Item 1: float32 K or V of stride 0 along L made BLAS reject its leading dimension (MKL printed an error,
    no exception, output off by up to 3)."""
    gen = torch.Generator().manual_seed(7)
    b, lq, h, hkv, dh = 2, 37, 4, 2, 32
    lk = 1 if kind == "length_one" else 300  # several key blocks of the CPU kernel
    q = torch.randn(b, lq, h, dh, generator=gen).to(dtype)
    plain = lambda: torch.randn(b, lk, hkv, dh, generator=gen).to(dtype)  # noqa: E731
    k = kv_view(kind, b, lk, hkv, dh, dtype, gen) if "k" in which else plain()
    v = kv_view(kind, b, lk, hkv, dh, dtype, gen) if "v" in which else plain()
    log_size = torch.rand(b, lk, generator=gen) * 2
    pos = torch.arange(lk).expand(b, lk) * 2
    q_pos = pos[:, -1:].expand(b, lq) + torch.arange(lq)
    table = ref.distance_bias_table(64, restore_ext.default_inv_freq(dh))
    args = [t.to(device) for t in (q, k, v, log_size, q_pos, pos, table)]
    for causal in (True, False):
        out = restore_ext.calibrated_attention(*args, causal=causal)
        expected = ref.calibrated_attention(q, k, v, log_size, q_pos, pos, table, causal=causal)
        eager = eager_same_precision(q, k, v, log_size, q_pos, pos, table, causal=causal)
        fa_tolerance_check(out.cpu(), expected, eager, floor=1e-5 if dtype == torch.float32 else 1e-4)
    captured = capfd.readouterr()
    assert "MKL" not in captured.out + captured.err and "incorrect on entry" not in captured.out + captured.err


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_log_size_inf_or_nan_is_refused(bad):
    """Item 5: +inf or NaN in log_size gave NaN outputs without an error."""
    q, k = torch.randn(1, 3, 2, 8), torch.randn(1, 5, 2, 8)
    log_size = torch.zeros(1, 5)
    log_size[0, 3] = bad
    with pytest.raises(RuntimeError, match=r"calibrated_attention: log_size must hold finite values or -inf.*"
                                           r"log_size\[0, 3\]"):
        restore_ext.calibrated_attention(q, k, k, log_size)
    strided = torch.zeros(5, 1).t()  # any strides are read
    strided[0, 4] = bad
    with pytest.raises(RuntimeError, match=r"log_size\[0, 4\]"):
        restore_ext.calibrated_attention(q, k, k, strided)


def test_log_size_minus_inf_still_masks():
    """-inf is the contract's mask, not an error; a query left with only masked keys gives zeros."""
    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8)
    log_size = torch.tensor([[0.0, -math.inf, 0.5, -math.inf]])
    out = restore_ext.calibrated_attention(q, k, v, log_size, causal=False)
    torch.testing.assert_close(out.double(), ref.calibrated_attention(q, k, v, log_size, causal=False), atol=1e-6, rtol=1e-6)
    out = restore_ext.calibrated_attention(q, k, v, torch.full((1, 4), -math.inf))
    assert (out == 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")
def test_log_size_inf_is_refused_on_cuda():
    """On CUDA the check is a device-side assert (no host sync): the next synchronising call raises, and the
    kernel prints the message. A fresh process, since a device assert leaves the CUDA context unusable."""
    run = run_isolated("""
        import math, torch, restore_ext
        q = torch.randn(1, 3, 2, 64, device="cuda", dtype=torch.float16); k = torch.randn(1, 5, 2, 64, device="cuda", dtype=torch.float16)
        ls = torch.zeros(1, 5, device="cuda"); ls[0, 2] = math.inf
        restore_ext.calibrated_attention(q, k, k, ls)
        torch.cuda.synchronize()
    """)
    assert run.returncode != 0
    assert "device-side assert" in run.stderr and "log_size must hold finite values" in run.stdout + run.stderr


def expected_with_exact_distances(q, k, v, q_pos, k_pos, table, causal):
    """docs/ops.md §5 in float64 with clamp(q_pos - k_pos, 0, T-1) taken on Python integers (exact: no int64
    wrap), as restore_ext.reference cannot for positions at the ends of int64."""
    b, lq, h, dh = q.shape
    lk = k.shape[1]
    dist = torch.tensor([[[min(max(qp - kp, 0), table.numel() - 1) for kp in k_pos[r].tolist()]
                          for qp in q_pos[r].tolist()] for r in range(b)])
    logit = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) / math.sqrt(dh) + table.double()[dist][:, None]
    if causal:
        logit = logit.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None] + lk - lq, -math.inf)
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(logit, dim=-1), v.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pattern", ["query_at_max", "query_at_min", "mixed", "int32_ends"])
def test_positions_at_int64_ends_saturate(pattern, causal, dtype, device):
    """Item 5: q_pos near INT64_MAX with a negative k_pos wrapped to a negative distance and read table[0]
    instead of table[T-1]."""
    gen = torch.Generator().manual_seed(3)
    b, lq, lk, h, dh, t = 2, 5, 9, 2, 16, 6
    if pattern == "query_at_max":
        q_pos = torch.tensor([INT64_MAX - i for i in range(lq)]).expand(b, lq)
        k_pos = torch.tensor([-1 - 3 * j for j in range(lk)]).expand(b, lk)
    elif pattern == "query_at_min":  # every key later than every query: distance 0
        q_pos = torch.tensor([INT64_MIN + i for i in range(lq)]).expand(b, lq)
        k_pos = torch.tensor([j for j in range(lk)]).expand(b, lk)
    elif pattern == "mixed":  # keys at both ends and in between, queries at both ends
        q_pos = torch.tensor([INT64_MAX, INT64_MIN, 0, INT64_MAX - 2, 3]).expand(b, lq)
        k_pos = torch.tensor([INT64_MIN, INT64_MAX, -5, 0, 2, INT64_MIN + 1, 1, INT64_MAX - 4, 4]).expand(b, lk)
    else:
        q_pos = torch.tensor([2**31 - 1 - i for i in range(lq)], dtype=torch.int32).expand(b, lq)
        k_pos = torch.tensor([-(2**31) + j for j in range(lk)], dtype=torch.int32).expand(b, lk)
    q = torch.randn(b, lq, h, dh, generator=gen).to(dtype)
    k = torch.randn(b, lk, h, dh, generator=gen).to(dtype)
    v = torch.randn(b, lk, h, dh, generator=gen).to(dtype)
    table = torch.linspace(0.0, 3.0, t)  # table[0] and table[T-1] far apart: a wrong index shows
    out = restore_ext.calibrated_attention(*(x.to(device) for x in (q, k, v)), None, q_pos.to(device), k_pos.to(device),
                                           table.to(device), causal=causal)
    expected = expected_with_exact_distances(q, k, v, q_pos, k_pos, table, causal)
    tol = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, atol=tol, rtol=tol)
