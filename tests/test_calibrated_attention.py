"""calibrated_attention (docs/ops.md §5) against the float64 reference, with FlashAttention's tolerance rule."""
import math

import pytest
import torch
import torch.nn.functional as F

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, DTYPES, eager_same_precision, fa_tolerance_check


def make_inputs(b, lq, lk, h, hkv, dh, dtype, device, bias=True, layout="blhd", seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(l, heads):
        if layout == "bhld":  # a (B, H, L, D) tensor seen as (B, L, H, D): strided, last dim contiguous
            return torch.randn(b, heads, l, dh, generator=gen).to(dtype).to(device).transpose(1, 2)
        return torch.randn(b, l, heads, dh, generator=gen).to(dtype).to(device)

    q, k, v = rand(lq, h), rand(lk, hkv), rand(lk, hkv)
    if not bias:
        return q, k, v, None, None, None, None
    # RESTORE's pattern: key positions increase with gaps (merged tokens keep a median index) and repeat
    # (several outputs can share a position in a padded batch); queries sit at the end of the sequence.
    k_pos = torch.sort(torch.randint(0, 3 * lk, (b, lk), generator=gen), dim=1).values
    q_pos = k_pos[:, -lq:] if lq <= lk else torch.arange(lq).expand(b, lq) + 3 * lk
    log_size = torch.log(torch.randint(1, 9, (b, lk), generator=gen).float())
    table = ref.distance_bias_table(max(1, lk), restore_ext.default_inv_freq(dh))  # shorter than 3*lk: clamps
    return q, k, v, log_size.to(device), q_pos.to(device), k_pos.to(device), table.to(device)


def check(args, causal, scale=None, floor=None):
    q = args[0]
    out = restore_ext.calibrated_attention(*args, causal=causal, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert not out.isnan().any()
    expected = ref.calibrated_attention(*(a.cpu() if a is not None else None for a in args), causal=causal, scale=scale)
    eager = eager_same_precision(*args, causal=causal, scale=scale)
    fa_tolerance_check(out.cpu(), expected, eager.cpu(), floor=floor or (1e-5 if q.dtype == torch.float32 else 1e-4))
    return out


CASES = [  # b, lq, lk, h, hkv, dh
    (1, 1, 1, 1, 1, 8),
    (2, 17, 17, 4, 4, 32),  # prefill, lengths not multiples of any block
    (1, 300, 300, 2, 1, 64),  # prefill over several key blocks, MQA
    (2, 1, 300, 8, 2, 64),  # decode, GQA 4
    (1, 5, 700, 8, 1, 64),  # multi-query decode, GQA 8
    (2, 70, 200, 4, 4, 16),  # Lq < Lk
    (1, 130, 90, 2, 2, 24),  # Lq > Lk: with causal, early queries see no key
    (1, 64, 64, 2, 2, 128),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_matches_reference(device, dtype, causal, bias, case):
    check(make_inputs(*case, dtype, device, bias=bias), causal)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_bhld_views_and_custom_scale(device, dtype):
    args = make_inputs(2, 40, 90, 4, 2, 32, dtype, device, layout="bhld")
    assert not args[0].is_contiguous()
    check(args, causal=True, scale=0.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_keys_whole_tile_and_whole_row(device, dtype):
    q, k, v, log_size, q_pos, k_pos, table = make_inputs(3, 40, 600, 4, 2, 32, dtype, device)
    log_size = log_size.clone()
    log_size[0, ::3] = -math.inf  # scattered padding
    log_size[1, 0:300] = -math.inf  # more than a whole key block
    log_size[2, :] = -math.inf  # every key of a batch row: its outputs are zeros
    out = check((q, k, v, log_size, q_pos, k_pos, table), causal=False)
    assert (out[2] == 0).all()
    out_c = check((q, k, v, log_size, q_pos, k_pos, table), causal=True)
    assert (out_c[2] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_queries_that_see_no_key_output_zeros(device):
    q, k, v, *_ = make_inputs(1, 10, 4, 2, 2, 16, torch.float32, device, bias=False)
    out = restore_ext.calibrated_attention(q, k, v, causal=True)  # query i sees keys j <= i - 6
    assert (out[:, :6] == 0).all() and not out.isnan().any() and (out[:, 6:] != 0).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hkv", [1, 2, 8])
def test_equals_sdpa_without_bias(device, dtype, hkv):
    """With log_size = 0 and no table, the op is plain attention: SDPA (with GQA expansion)."""
    q, k, v, *_ = make_inputs(2, 50, 50, 8, hkv, 32, dtype, device, bias=False)
    zeros = torch.zeros(2, 50, device=device)
    out = restore_ext.calibrated_attention(q, k, v, zeros, causal=True)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    tol = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}[dtype]
    torch.testing.assert_close(out, expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("device", DEVICES)
def test_int32_positions_and_empty_shapes(device):
    args = list(make_inputs(2, 9, 30, 2, 1, 16, torch.float32, device))
    out64 = restore_ext.calibrated_attention(*args)
    args[4], args[5] = args[4].int(), args[5].int()
    torch.testing.assert_close(restore_ext.calibrated_attention(*args), out64)
    q, k, v, *_ = make_inputs(2, 0, 30, 2, 1, 16, torch.float32, device, bias=False)
    assert restore_ext.calibrated_attention(q, k, v).shape == (2, 0, 2, 16)
    q, k, v, *_ = make_inputs(2, 3, 0, 2, 1, 16, torch.float32, device, bias=False)
    assert (restore_ext.calibrated_attention(q, k, v, causal=False) == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for dtype, bias, causal in [(torch.float32, True, True), (torch.bfloat16, False, False)]:
        q, k, v, ls, qp, kp, tb = make_inputs(1, 6, 20, 4, 2, 16, dtype, device, bias=bias)
        torch.library.opcheck(torch.ops.restore.calibrated_attention.default, (q, k, v, ls, qp, kp, tb, causal, None))
