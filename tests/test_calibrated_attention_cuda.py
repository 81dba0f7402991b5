"""calibrated_attention on CUDA (docs/ops.md §5) against the float64 reference, with FlashAttention's tolerance rule.

Covers each CUDA path: the tensor-core kernel (float16/bfloat16, head dims 64/96/128/256), its flash-decoding
splits (Lq <= 16) and their combine, and the SIMT kernel (float32, other head dims). Skipped without a GPU.
"""
import math

import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import HAS_CUDA, eager_same_precision, fa_tolerance_check

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")]

LOWP = [torch.float16, torch.bfloat16]
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_inputs(b, lq, lk, h, hkv, dh, dtype, bias=True, layout="blhd", seed=0, pos_dtype=torch.long):
    gen = torch.Generator().manual_seed(seed)

    def rand(length, heads):
        if layout == "bhld":  # a (B, H, L, D) tensor seen as (B, L, H, D): strided, last dim contiguous
            return torch.randn(b, heads, length, dh, generator=gen).to(dtype).cuda().transpose(1, 2)
        return torch.randn(b, length, heads, dh, generator=gen).to(dtype).cuda()

    q, k, v = rand(lq, h), rand(lk, hkv), rand(lk, hkv)
    if not bias:
        return [q, k, v, None, None, None, None]
    # Key positions increase with gaps and repeats (merged tokens share a median index); the table is
    # shorter than the largest distance, so the clamp to T-1 is exercised.
    k_pos = torch.sort(torch.randint(0, 3 * lk, (b, lk), generator=gen), dim=1).values
    q_pos = k_pos[:, -lq:] if lq <= lk else torch.arange(lq).expand(b, lq) + 3 * lk
    log_size = torch.log(torch.randint(1, 9, (b, lk), generator=gen).float())
    table = ref.distance_bias_table(max(1, lk), restore_ext.default_inv_freq(dh))
    return [q, k, v, log_size.cuda(), q_pos.to(pos_dtype).cuda(), k_pos.to(pos_dtype).cuda(), table.cuda()]


def check(args, causal, scale=None):
    q = args[0]
    out = restore_ext.calibrated_attention(*args, causal=causal, scale=scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous() and out.is_cuda
    assert not out.isnan().any()
    cpu = [a.cpu() if a is not None else None for a in args]
    expected = ref.calibrated_attention(*cpu, causal=causal, scale=scale)
    eager = eager_same_precision(*args, causal=causal, scale=scale)
    fa_tolerance_check(out.cpu(), expected, eager.cpu(), floor=1e-5 if q.dtype == torch.float32 else 1e-4)
    return out


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("dh", [64, 96, 128, 256])
@pytest.mark.parametrize("length", [64, 100, 257])  # a whole tile, and lengths no tile size divides
@pytest.mark.parametrize("causal", [True, False])
def test_prefill_tensor_cores(dtype, dh, length, causal):
    check(make_inputs(2, length, length, 4, 2, dh, dtype), causal)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("lq", [1, 5, 16])  # 16 queries x GQA 8 = two tiles of packed rows
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("causal", [True, False])
def test_decode_split_keys(dtype, lq, group, causal):
    check(make_inputs(1, lq, 4096, 8, 8 // group, 128, dtype), causal)


@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("dh", [64, 256])
def test_decode_split_with_no_visible_key(dtype, dh):
    # Whole splits of keys at -inf give lse = -inf partials that must weigh nothing in the combine; the
    # second batch masks every key, so its rows are zeros.
    args = make_inputs(2, 3, 4096, 4, 1, dh, dtype)
    args[3][0, 700:3000] = -math.inf
    args[3][1] = -math.inf
    out = check(args, causal=True)
    assert (out[1] == 0).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("lq,lk", [(100, 300), (17, 1000), (1, 1), (3, 70)])
@pytest.mark.parametrize("causal", [True, False])
def test_fewer_queries_than_keys(dtype, lq, lk, causal):
    check(make_inputs(2, lq, lk, 8, 2, 64, dtype), causal)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_more_queries_than_keys_early_rows_are_zero(dtype):
    # Causal aligned to the end: with Lq > Lk the first Lq - Lk queries see no key.
    args = make_inputs(1, 150, 90, 2, 2, 64, dtype)
    out = check(args, causal=True)
    assert (out[:, :60] == 0).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("dh", [64, 128])
def test_masked_keys_whole_tile_and_whole_row(dtype, dh):
    args = make_inputs(3, 130, 200, 4, 4, dh, dtype)
    args[3][0, 64:128] = -math.inf  # exactly one key tile
    args[3][1, 5:190:3] = -math.inf  # scattered
    args[3][2] = -math.inf  # every key: every row of batch 2 is zeros
    for causal in (True, False):
        out = check(args, causal)
        assert (out[2] == 0).all()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("dh", [64, 128])
def test_transposed_views(dtype, dh):
    for lq, lk in [(77, 77), (2, 600)]:
        check(make_inputs(2, lq, lk, 4, 2, dh, dtype, layout="bhld"), causal=True)


@pytest.mark.parametrize("dtype", LOWP)
def test_unaligned_views(dtype):
    # Odd row strides and a 2-byte offset: not 16-byte aligned, so the op copies before cp.async.
    base = [torch.randn(2, length, heads, 65, device="cuda").to(dtype) for length, heads in ((40, 4), (90, 2), (90, 2))]
    q, k, v = (t[..., 1:] for t in base)
    check([q, k, v, None, None, None, None], causal=True)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_int32_positions_and_bias_subsets(dtype):
    args = make_inputs(2, 33, 129, 4, 1, 64, dtype, pos_dtype=torch.int32)
    check(args, causal=True)
    check(args[:4] + [None, None, None], causal=True)  # log_size only (RESTORE's decode default)
    check(args[:3] + [None] + args[4:], causal=False)  # positions and table only
    check(args[:3] + [None] * 4, causal=False, scale=0.3)


@pytest.mark.parametrize(
    "dtype,dh",
    [(t, d) for t in ALL_DTYPES for d in (8, 80, 200)] + [(torch.float32, 96), (torch.float32, 256)],
)
def test_simt_head_dims(dtype, dh):
    # float32 always, and float16/bfloat16 head dims without a tensor-core instantiation, run the SIMT kernel.
    for lq, lk in [(37, 37), (3, 300)]:
        check(make_inputs(2, lq, lk, 4, 2, dh, dtype), causal=True)


def test_unsupported_head_dim_errors_clearly():
    q = torch.randn(1, 4, 2, 320, device="cuda", dtype=torch.float16)
    with pytest.raises(RuntimeError, match=r"head dim Dh = 320 is not supported on CUDA.*Dh <= 256"):
        restore_ext.calibrated_attention(q, q, q)


def test_matches_cpu_op():
    args = make_inputs(2, 50, 80, 4, 2, 64, torch.float32)
    out = restore_ext.calibrated_attention(*args, causal=True)
    cpu = restore_ext.calibrated_attention(*[a.cpu() for a in args], causal=True)
    torch.testing.assert_close(out.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_runs_on_the_current_stream():
    args = make_inputs(1, 5, 2048, 8, 1, 128, torch.float16)
    expected = restore_ext.calibrated_attention(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = restore_ext.calibrated_attention(*args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_opcheck(dtype):
    for args, causal in [(make_inputs(1, 20, 40, 4, 2, 64, dtype), True), (make_inputs(1, 2, 300, 2, 2, 128, dtype), False)]:
        torch.library.opcheck(torch.ops.restore.calibrated_attention.default, (*args, causal, None))
