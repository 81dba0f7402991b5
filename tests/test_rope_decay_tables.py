"""rope_decay_tables, the M-RoPE axis of each frequency, and the multi-axis dense bias (docs/ops.md §4b, §5b)."""
import math

import pytest
import torch

import restore_ext
from restore_ext import attention_bias as ab
from restore_ext import reference

QWEN2_5 = ([16, 24, 24], 64, False)  # mrope_section, rotary frequencies (head_dim 128), interleaved
QWEN3 = ([24, 20, 20], 64, True)


def random_inv_freq(f, seed):
    g = torch.Generator().manual_seed(seed)
    theta = float(torch.empty(()).uniform_(1e3, 1e6, generator=g))
    return restore_ext.default_inv_freq(2 * f, theta=theta)


@pytest.mark.parametrize("section,f,interleaved", [QWEN2_5, QWEN3, ([2, 3, 3], 8, False), ([4, 2, 2], 8, True),
                                                   ([1, 1, 1], 3, True), ([0, 5, 0], 5, False), ([3, 4, 1], 11, True)])
def test_axis_of_freq_matches_reference(section, f, interleaved):
    got = ab.mrope_axis_of_freq(section, f, interleaved)
    assert got.dtype == torch.long and got.shape == (f,)
    assert got.tolist() == reference.mrope_axis_of_freq(section, f, interleaved)


def test_axis_of_freq_known_layouts():
    q25 = ab.mrope_axis_of_freq(*QWEN2_5).tolist()
    assert q25 == [0] * 16 + [1] * 24 + [2] * 24
    q3 = ab.mrope_axis_of_freq(*QWEN3).tolist()
    assert q3[:6] == [0, 1, 2, 0, 1, 2] and q3[57:60] == [0, 1, 2] and q3[60:] == [0] * 4
    assert [q3.count(a) for a in range(3)] == [24, 20, 20]


@pytest.mark.parametrize("section,f,interleaved", [QWEN2_5, QWEN3, ([1, 2, 1], 4, False)])
@pytest.mark.parametrize("max_distance", [1, 7, 300])
def test_rope_decay_tables_match_reference(section, f, interleaved, max_distance):
    inv_freq = random_inv_freq(f, seed=f + max_distance)
    axis = ab.mrope_axis_of_freq(section, f, interleaved)
    got = restore_ext.rope_decay_tables(max_distance, inv_freq, axis)
    assert got.dtype == torch.float32 and got.shape == (3, max_distance) and got.is_contiguous()
    ref = reference.rope_decay_tables(max_distance, inv_freq, axis.tolist())
    torch.testing.assert_close(got.double(), ref, atol=1e-7, rtol=0)
    # at distance 0 every cosine is 1: each axis holds its share of the frequencies
    counts = torch.bincount(axis, minlength=3).double() / f
    torch.testing.assert_close(got[:, 0].double(), counts, atol=1e-7, rtol=0)


@pytest.mark.parametrize("section,f,interleaved", [QWEN2_5, QWEN3])
def test_rope_decay_tables_sum_is_the_1d_decay(section, f, interleaved):
    """Summed over the axes the tables are the 1-D decay: log(2 - sum_s) is distance_bias_table (SPEC §4)."""
    inv_freq = random_inv_freq(f, seed=3)
    tables = restore_ext.rope_decay_tables(4096, inv_freq, ab.mrope_axis_of_freq(section, f, interleaved))
    one_d = restore_ext.distance_bias_table(4096, inv_freq)
    torch.testing.assert_close(torch.log(2 - tables.double().sum(0)), one_d.double(), atol=3e-7, rtol=0)


def test_rope_decay_tables_single_axis():
    inv_freq = random_inv_freq(16, seed=5)
    tables = restore_ext.rope_decay_tables(100, inv_freq, torch.zeros(16, dtype=torch.int32))
    d = torch.arange(100, dtype=torch.float64)
    torch.testing.assert_close(tables[0].double(), torch.cos(torch.outer(d, inv_freq)).mean(-1), atol=1e-7, rtol=0)
    assert not tables[1:].any()


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, torch.ones(4), torch.zeros(4, dtype=torch.long)), "max_distance must be an int >= 1"),
        ((3.5, torch.ones(4), torch.zeros(4, dtype=torch.long)), "max_distance must be an int >= 1"),
        ((8, torch.ones(2, 2), torch.zeros(4, dtype=torch.long)), "inv_freq must be a non-empty 1-D tensor"),
        ((8, torch.ones(4, dtype=torch.long), torch.zeros(4, dtype=torch.long)), "inv_freq must be floating point"),
        ((8, torch.ones(4), torch.zeros(3, dtype=torch.long)), r"axis_of_freq must be a tensor of inv_freq's shape"),
        ((8, torch.ones(4), torch.zeros(4)), "axis_of_freq must be an integer tensor"),
        ((8, torch.ones(4), torch.tensor([0, 1, 2, 3])), r"axis_of_freq values must lie in \[0, 3\)"),
    ],
)
def test_rope_decay_tables_errors(args, match):
    with pytest.raises(ValueError, match="rope_decay_tables: " + match):
        restore_ext.rope_decay_tables(*args)


def test_axis_of_freq_errors():
    with pytest.raises(ValueError, match="mrope_axis_of_freq: mrope_section must be 3 non-negative ints"):
        ab.mrope_axis_of_freq([16, 24], 40, False)
    with pytest.raises(ValueError, match="mrope_axis_of_freq: contiguous sections"):
        ab.mrope_axis_of_freq([16, 24, 24], 60, False)
    with pytest.raises(ValueError, match="mrope_axis_of_freq: num_freqs must be a positive int"):
        ab.mrope_axis_of_freq([1, 1, 1], 0, True)


# ------------------------------------------------------------------------------------- the dense bias
def multi_axis_bias(q_pos, k_pos, table, log_size=None, causal=True):
    """(B, Lq, Lk) float64: dense_attention_bias for multi-axis positions, added to zero float64 scores."""
    zeros = torch.zeros(q_pos.shape[0], 1, q_pos.shape[1], k_pos.shape[1], dtype=torch.float64)
    return ab.dense_attention_bias(log_size, q_pos, k_pos, table, causal, scores=zeros)[:, 0]


def test_multi_axis_bias_one_axis_equals_1d_form():
    """S = 1, causal, positions that never decrease: the 1-D bias with table_1d = log(2 - table[0])."""
    g = torch.Generator().manual_seed(0)
    inv_freq = random_inv_freq(8, seed=9)
    table = restore_ext.rope_decay_tables(64, inv_freq, torch.zeros(8, dtype=torch.long))[:1]
    lk, lq = 40, 9
    k_pos = torch.randint(0, 4, (2, lk), generator=g).cumsum(1)
    q_pos = k_pos[:, -lq:]
    log_size = torch.randn(2, lk, generator=g).float()
    got = multi_axis_bias(q_pos[..., None], k_pos[..., None], table, log_size)
    table_1d = torch.log(2 - table[0].double())
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).clamp(0, 63)
    want = table_1d[dist] + log_size.double()[:, None, :]
    want = want.masked_fill(torch.ones(lq, lk, dtype=torch.bool).triu(lk - lq + 1), -math.inf)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_multi_axis_bias_text_positions_equal_1d_bias():
    """Text tokens carry the same id on all three axes: the bias is the 1-D distance table's (SPEC §4)."""
    inv_freq = random_inv_freq(64, seed=11)
    tables = restore_ext.rope_decay_tables(512, inv_freq, ab.mrope_axis_of_freq(*QWEN3))
    pos = torch.arange(0, 300, 3)[None, :, None].expand(1, 100, 3)
    got = multi_axis_bias(pos, pos, tables, causal=False)
    one_d = restore_ext.distance_bias_table(512, inv_freq).double()
    d = (pos[0, :, None, 0] - pos[0, None, :, 0]).abs().clamp_max(511)
    torch.testing.assert_close(got[0], one_d[d], atol=3e-7, rtol=0)


def test_multi_axis_bias_by_hand():
    """One pair worked out term by term: an earlier key with larger h and w than the query (|d| matters),
    a clamp to T - 1 on t, a padding key at -inf, and a key hidden by causality."""
    table = torch.tensor([[0.5, 0.25, 0.125, 0.0625], [0.25, 0.125, 0.0625, 0.03125], [0.25, 0.0625, 0.03125, 0.0]])
    k_pos = torch.tensor([[[0, 5, 5], [9, 3, 2], [9, 3, 3]]])
    q_pos = torch.tensor([[[9, 3, 3]]])
    log_size = torch.tensor([[math.log(3.0), -math.inf, 0.0]])
    got = multi_axis_bias(q_pos, k_pos, table, log_size)
    log3 = float(log_size[0, 0])  # log(3) as float32 holds it
    want0 = log3 + math.log(2 - (0.0625 + 0.0625 + 0.03125))  # |d| = (9, 2, 2): t clamps to T - 1 = 3
    assert got.shape == (1, 1, 3)
    assert got[0, 0, 0].item() == pytest.approx(want0, abs=1e-12)
    assert got[0, 0, 1].item() == -math.inf
    assert got[0, 0, 2].item() == pytest.approx(math.log(2 - 1.0), abs=1e-12)  # distance 0: log(2 - sum_s t[s, 0])
    causal = multi_axis_bias(k_pos, k_pos, table)
    hidden = torch.ones(3, 3, dtype=torch.bool).triu(1)
    assert torch.isinf(causal[0][hidden]).all() and torch.isfinite(causal[0][~hidden]).all()


def test_reference_attention_one_axis_equals_1d_form():
    """The float64 reference of calibrated_attention with (B, L, 1) positions and a (1, T) table equals its 1-D
    form with table_1d = log(2 - table[0]) (causal, positions that never decrease), GQA, Lq < Lk."""
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 5, 4, 8, generator=g)
    k, v = torch.randn(2, 12, 2, 8, generator=g), torch.randn(2, 12, 2, 8, generator=g)
    table = restore_ext.rope_decay_tables(32, random_inv_freq(4, seed=2), torch.zeros(4, dtype=torch.long))[:1]
    k_pos = torch.randint(0, 3, (2, 12), generator=g).cumsum(1)
    log_size = torch.randn(2, 12, generator=g)
    multi = reference.calibrated_attention(q, k, v, log_size, k_pos[:, -5:, None], k_pos[..., None], table)
    one = reference.calibrated_attention(q, k, v, log_size, k_pos[:, -5:], k_pos, torch.log(2 - table[0].double()))
    torch.testing.assert_close(multi, one, atol=1e-12, rtol=0)
