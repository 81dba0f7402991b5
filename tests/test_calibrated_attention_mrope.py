"""calibrated_attention with M-RoPE (t, h, w) positions and a (3, T) table of decay shares (docs/ops.md §5b)
against the float64 reference, with FlashAttention's tolerance rule, on the position patterns Qwen-VL models
produce: an image grid, text after it, a video with a temporal stride, reduced (gapped) positions, and
earlier keys with a larger h or w than their query."""
import math

import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from restore_ext.attention_bias import mrope_axis_of_freq, rope_decay_tables
from conftest import DEVICES, DTYPES, HAS_CUDA, eager_same_precision, fa_tolerance_check, run_isolated

IMAGE, VIDEO = "image", "video"


def qwen_positions(segments):
    """(L, 3) int64 (t, h, w) ids as Qwen-VL's get_rope_index lays them out: a text token at t = h = w = next;
    an image grid (rows, cols) at (next, next + r, next + c); a video (frames, rows, cols) with temporal stride
    2 at (next + 2 f, next + r, next + c); the text after a grid resumes past its largest id."""
    rows, nxt = [], 0
    for seg in segments:
        if isinstance(seg, int):
            rows += [[nxt + i] * 3 for i in range(seg)]
            nxt += seg
            continue
        kind, shape = seg
        frames, hh, ww = (1, *shape) if kind == IMAGE else shape
        grid = [[nxt + 2 * f, nxt + r, nxt + c] for f in range(frames) for r in range(hh) for c in range(ww)]
        rows += grid
        nxt = max(max(g) for g in grid) + 1
    return torch.tensor(rows, dtype=torch.long)


PATTERNS = {  # name: segments of one sequence
    "image_then_text": [3, (IMAGE, (4, 6)), 7],
    "video_then_text": [2, (VIDEO, (3, 2, 4)), 5],
    "image_and_video": [2, (IMAGE, (3, 3)), 2, (VIDEO, (2, 3, 2)), 4],
    "text_only": [40],
}


def mrope_table(max_distance, dh, interleaved):
    """Decay shares of default RoPE over dh // 2 frequencies in Qwen2.5-VL's contiguous section layout, or
    Qwen3-VL's interleaved one (docs/ops.md §4b)."""
    f = dh // 2
    if interleaved:
        sections = [f - 2 * (f // 3), f // 3, f // 3]
    else:
        sections = [f // 4, (f - f // 4) // 2, f - f // 4 - (f - f // 4) // 2]
    axes = mrope_axis_of_freq(sections, f, interleaved)
    return rope_decay_tables(max_distance, restore_ext.default_inv_freq(dh), axes)


def make_inputs(b, lq, segments, h, hkv, dh, dtype, device, reduce_to=None, seed=0, interleaved=False,
                max_distance=None):
    """Keys are the sequence's tokens (a random ordered subset of reduce_to of them: reduced, gapped positions),
    queries its last lq tokens (decode: lq = 1). Each batch row is shifted by its index (left padding)."""
    gen = torch.Generator().manual_seed(seed)
    full = qwen_positions(segments)
    keep = full
    if reduce_to is not None:
        idx = torch.sort(torch.randperm(full.shape[0], generator=gen)[:reduce_to]).values
        keep = full[idx]
    lk = keep.shape[0]
    k_pos = torch.stack([keep + i for i in range(b)])
    q_pos = k_pos[:, -lq:] if lq <= lk else torch.stack([full[-1] + 1 + torch.arange(lq)[:, None]] * b) + 0
    q = torch.randn(b, lq, h, dh, generator=gen).to(dtype)
    k, v = (torch.randn(b, lk, hkv, dh, generator=gen).to(dtype) for _ in range(2))
    log_size = torch.log(torch.randint(1, 9, (b, lk), generator=gen).float())
    table = mrope_table(max_distance or 2 * lk, dh, interleaved)
    return tuple(t.to(device) for t in (q, k, v, log_size, q_pos, k_pos, table))


def check(args, causal, floor=None):
    q = args[0]
    out = restore_ext.calibrated_attention(*args, causal=causal)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert not out.isnan().any()
    expected = ref.calibrated_attention(*(a.cpu() if a is not None else None for a in args), causal=causal)
    eager = eager_same_precision(*args, causal=causal)
    fa_tolerance_check(out.cpu(), expected, eager.cpu(), floor=floor or (1e-5 if q.dtype == torch.float32 else 1e-4))
    return out


CASES = [  # b, lq, pattern, h, hkv, dh, reduce_to
    (1, 1, "image_then_text", 2, 1, 16, None),  # decode
    (2, 34, "image_then_text", 4, 2, 32, None),  # prefill: every query, earlier keys with larger w
    (2, 5, "video_then_text", 8, 2, 64, 20),  # reduced video, multi-query decode, GQA 4
    (1, 26, "image_and_video", 2, 2, 24, 26),
    (2, 40, "text_only", 2, 1, 16, None),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_reference(device, dtype, causal, case):
    b, lq, pattern, h, hkv, dh, reduce_to = case
    check(make_inputs(b, lq, PATTERNS[pattern], h, hkv, dh, dtype, device, reduce_to=reduce_to), causal)


@pytest.mark.parametrize("device", DEVICES)
def test_long_sequence_over_many_key_blocks_and_qwen3_interleaved_layout(device):
    """A 16 x 40 image between text runs (several CPU key blocks and row blocks), the Qwen3-VL interleaved
    section layout, and a table shorter than the distances (clamps to its last entry)."""
    segs = [30, (IMAGE, (16, 40)), 300]
    args = make_inputs(1, 400, segs, 4, 1, 32, torch.float32, device, interleaved=True, max_distance=200)
    check(args, causal=True)


@pytest.mark.parametrize("device", DEVICES)
def test_text_only_equals_the_one_axis_form(device):
    """With t = h = w, causal attention and positions that never decrease, §5b equals §5 with the 1-D table
    log(2 - decay.sum(0)) (docs/ops.md §5b)."""
    q, k, v, ls, qp, kp, table = make_inputs(2, 30, [60], 4, 2, 32, torch.float32, device, reduce_to=45)
    multi = restore_ext.calibrated_attention(q, k, v, ls, qp, kp, table)
    table_1d = torch.log(2 - table.double().sum(0)).float()
    one = restore_ext.calibrated_attention(q, k, v, ls, qp[..., 0], kp[..., 0], table_1d)
    torch.testing.assert_close(multi, one, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_absolute_distance_per_axis(device):
    """Under M-RoPE an earlier key can have a larger w than its query: the distance is |dq - dk| per axis,
    not clamped at 0 (which would read table[s, 0] for that axis)."""
    q, k, v, _, qp, kp, table = make_inputs(1, 1, [1], 1, 1, 16, torch.float32, device, interleaved=True,
                                            max_distance=16)
    k = torch.cat([k, k + 1]).reshape(1, 2, 1, 16)
    v = torch.cat([v, -v]).reshape(1, 2, 1, 16)
    kp = torch.tensor([[[5, 5, 9], [5, 6, 5]]], device=device)  # key 0: w 9 > the query's w
    qp = torch.tensor([[[5, 7, 5]]], device=device)
    out = restore_ext.calibrated_attention(q, k, v, None, qp, kp, table)
    want = ref.calibrated_attention(*(t.cpu() for t in (q, k, v)), None, qp.cpu(), kp.cpu(), table.cpu())
    torch.testing.assert_close(out.cpu().double(), want, rtol=1e-5, atol=1e-6)
    # The clamped-at-0 reading would weigh key 0 with log(2 - table[0, 0] - table[1, 2] - table[2, 0]).
    table = table.cpu().double()
    bias_abs = math.log(2 - table[0, 0] - table[1, 2] - table[2, 4])
    bias_clamped = math.log(2 - table[0, 0] - table[1, 2] - table[2, 0])
    assert abs(bias_abs - bias_clamped) > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_and_int32_positions(device):
    """Ids at the ends of int64 saturate per axis (no wrapped difference); int32 ids equal int64 ones."""
    q, k, v, ls, qp, kp, table = make_inputs(2, 9, PATTERNS["image_then_text"], 2, 1, 16, torch.float32, device)
    out64 = restore_ext.calibrated_attention(q, k, v, ls, qp, kp, table)
    torch.testing.assert_close(restore_ext.calibrated_attention(q, k, v, ls, qp.int(), kp.int(), table), out64)
    big, small = torch.iinfo(torch.int64).max, torch.iinfo(torch.int64).min
    qp, kp = qp.clone(), kp.clone()
    qp[0, :, 1] = big - torch.arange(9, device=device)
    kp[0, ::3, 2] = small + 5
    kp[1, 1::4, 0] = big
    check((q, k, v, ls, qp, kp, table), causal=False)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    args = make_inputs(1, 6, PATTERNS["image_then_text"], 4, 2, 16, torch.float32, device, reduce_to=20)
    torch.library.opcheck(torch.ops.restore.calibrated_attention.default, (*args, True, None))
    compiled = torch.compile(restore_ext.calibrated_attention, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(*args), restore_ext.calibrated_attention(*args))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dh", [64, 96, 128, 256])
@pytest.mark.parametrize("lq", [1, 5, 100])
def test_cuda_kernels(dtype, dh, lq):
    """Each CUDA path with M-RoPE positions: tensor cores (float16 / bfloat16 at these head dims), flash-decoding
    splits with packed GQA (Lq <= 16) and their combine, and the SIMT kernel (float32)."""
    segments = [20, (IMAGE, (8, 16)), 40]
    check(make_inputs(2, lq, segments, 8, 2, dh, dtype, "cuda", reduce_to=150), causal=True)


BAD_SHAPES = {
    "q_pos_two_axes": (lambda a: {"q_pos": a["q_pos"][..., :2]}, "q_pos must have shape"),
    "k_pos_1d_with_3d_q_pos": (lambda a: {"k_pos": a["k_pos"][..., 0]}, "k_pos must have shape (B, Lk, 3)"),
    "q_pos_1d_with_3d_k_pos": (lambda a: {"q_pos": a["q_pos"][..., 0]}, "k_pos must have shape (B, Lk)"),
    "table_1d_with_3d_positions": (lambda a: {"table": a["table"][0]}, "table must be (3, T) decay shares"),
    "table_two_rows": (lambda a: {"table": a["table"][:2]}, "table must be (3, T) decay shares"),
    "table_3d_with_1d_positions": (lambda a: {"q_pos": a["q_pos"][..., 0], "k_pos": a["k_pos"][..., 0]},
                                   "table must be 1-D with at least one entry"),
}
BAD_VALUES = {
    "share_above_one": (lambda t: t.index_put_((torch.tensor(1), torch.tensor(3)), torch.tensor(1.5)),
                        r"decay shares in \[-1, 1\], got 1.5 at table\[1, 3\]"),
    "share_nan": (lambda t: t.index_put_((torch.tensor(2), torch.tensor(0)), torch.tensor(math.nan)),
                  r"decay shares in \[-1, 1\], got nan at table\[2, 0\]"),
    "maxima_reach_two": (lambda t: t.fill_(0.7), "row maxima of an M-RoPE table must add up to less than 2"),
}


@pytest.mark.parametrize("name", BAD_SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_bad_position_shapes_are_refused(device, name):
    args = dict(zip(["q", "k", "v", "log_size", "q_pos", "k_pos", "table"],
                    make_inputs(1, 4, [12], 2, 1, 16, torch.float32, device)))
    change, message = BAD_SHAPES[name]
    args.update(change(args))
    with pytest.raises(RuntimeError, match=r"calibrated_attention: " + message.replace("(", r"\(").replace(")", r"\)")):
        restore_ext.calibrated_attention(**args)


@pytest.mark.parametrize("name", BAD_VALUES)
def test_bad_tables_are_refused_on_cpu(name):
    """The CUDA path refuses the same tables by a device-side assert (emulated in test_cuda_emulation.py)."""
    q, k, v, ls, qp, kp, table = make_inputs(1, 4, [12], 2, 1, 16, torch.float32, "cpu")
    change, message = BAD_VALUES[name]
    with pytest.raises(RuntimeError, match="calibrated_attention: .*" + message):
        restore_ext.calibrated_attention(q, k, v, ls, qp, kp, change(table.clone()))


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")
@pytest.mark.parametrize("table, message", [
    ("torch.full((5,), math.inf)", "table must hold finite values or -inf"),
    ("torch.full((3, 5), 0.7)", "row maxima of an M-RoPE table must add up to less than 2"),
    ("torch.full((3, 5), 1.5)", "decay shares in [-1, 1]"),
])
def test_bad_tables_are_refused_on_cuda(table, message):
    """On CUDA the table check is a device-side assert (no host sync), as for log_size: the next synchronising
    call raises and the kernel prints the message. A fresh process: the assert leaves the context unusable."""
    run = run_isolated(f"""
        import math, torch, restore_ext
        q = torch.randn(1, 3, 2, 64, device="cuda", dtype=torch.float16)
        table = {table}.cuda()
        shape = (1, 3) if table.dim() == 1 else (1, 3, 3)
        pos = torch.zeros(shape, dtype=torch.long, device="cuda")
        restore_ext.calibrated_attention(q, q, q, None, pos, pos, table)
        torch.cuda.synchronize()
    """)
    assert run.returncode != 0
    assert "device-side assert" in run.stderr and message in run.stdout + run.stderr
