"""restore_ext.attention_bias: the RoPE distance table (docs/ops.md §4) and the dense RESTORE bias (§5) that the
reference, the tests' eager yardstick, the demo and the benchmarks build their attention from."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import restore_ext
from restore_ext import reference as ref
from restore_ext.attention_bias import causal_visible, dense_attention_bias, distance_bias


def test_distance_bias_table_matches_reference():
    for rotary, theta, length in [(128, 10000.0, 5000), (64, 500000.0, 100), (2, 10.0, 1)]:
        inv_freq = restore_ext.default_inv_freq(rotary, theta)
        torch.testing.assert_close(
            restore_ext.distance_bias_table(length, inv_freq), ref.distance_bias_table(length, inv_freq)
        )
    t = restore_ext.distance_bias_table(4096, restore_ext.default_inv_freq(128))
    assert t.dtype == torch.float32 and t[0] == 0 and (t >= 0).all() and t.max() < math.log(3)  # mean cos >= -1
    inv = restore_ext.default_inv_freq(128)
    expected_inv = 10000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    torch.testing.assert_close(inv, expected_inv)


@pytest.mark.parametrize("bad", [3.7, 3.0, "5", None, True, torch.tensor(2.0)])
def test_distance_bias_table_refuses_a_non_integer_length(bad):
    """A float length used to be truncated silently (3.7 -> a 3-entry table)."""
    with pytest.raises(ValueError, match=r"distance_bias_table: max_distance must be an int >= 1, got"):
        restore_ext.distance_bias_table(bad, restore_ext.default_inv_freq(8))


def test_distance_bias_table_takes_any_integer_type():
    inv = restore_ext.default_inv_freq(8)
    want = restore_ext.distance_bias_table(5, inv)
    for length in (np.int64(5), torch.tensor(5)):
        assert torch.equal(restore_ext.distance_bias_table(length, inv), want)


def literal_bias(log_size, q_pos, k_pos, table, lq, lk, causal):
    """The bias of docs/ops.md §5 one (b, i, j) at a time, in Python floats."""
    b = q_pos.shape[0]
    out = torch.zeros(b, 1, lq, lk, dtype=torch.float64)
    t = table.shape[0]
    for r in range(b):
        for i in range(lq):
            for j in range(lk):
                if causal and j > i + lk - lq:
                    out[r, 0, i, j] = -math.inf
                    continue
                d = min(max(int(q_pos[r, i]) - int(k_pos[r, j]), 0), t - 1)
                out[r, 0, i, j] = float(log_size[r, j]) + float(table[d])
    return out


def bias_inputs(b, lq, lk, t, seed=0):
    g = torch.Generator().manual_seed(seed)
    log_size = torch.log(torch.randint(1, 9, (b, lk), generator=g).float())
    log_size[:, ::5] = -math.inf  # padding keys
    k_pos = torch.sort(torch.randint(0, 3 * lk, (b, lk), generator=g), dim=1).values
    q_pos = torch.randint(-5, 4 * lk, (b, lq), generator=g)  # negative distances and beyond the table too
    table = torch.rand(t, generator=g)
    return log_size, q_pos, k_pos, table


@pytest.mark.parametrize("lq,lk", [(1, 1), (5, 5), (3, 9), (9, 3), (1, 17)])
@pytest.mark.parametrize("causal", [True, False])
def test_bias_alone_matches_the_definition(lq, lk, causal):
    log_size, q_pos, k_pos, table = bias_inputs(2, lq, lk, t=7, seed=lq * 31 + lk)
    got = dense_attention_bias(log_size, q_pos, k_pos, table, causal)
    assert got.shape == (2, 1, lq, lk) and got.dtype == torch.float32
    want = literal_bias(log_size, q_pos, k_pos, table, lq, lk, causal)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    assert torch.equal(got.isneginf(), want.isneginf())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_added_to_scores_in_their_dtype(dtype):
    log_size, q_pos, k_pos, table = bias_inputs(2, 6, 8, t=5, seed=3)
    scores = torch.randn(2, 3, 6, 8).to(dtype)
    got = dense_attention_bias(log_size, q_pos, k_pos, table, True, scores=scores)
    assert got.shape == scores.shape and got.dtype == dtype
    # Each term converted to the scores' dtype, then added in that dtype: what eager attention would compute.
    dist = (q_pos[:, :, None] - k_pos[:, None, :]).clamp(0, 4)
    want = scores + log_size.to(dtype)[:, None, None, :]
    want = want + table[dist].to(dtype)[:, None]
    want = want.masked_fill(~torch.ones(6, 8, dtype=torch.bool).tril(2), -math.inf)
    assert torch.equal(got, want)


def test_hidden_keys_are_replaced_not_added():
    """A NaN or inf score of a key the causal mask hides must not leak into the row (masked_fill semantics)."""
    scores = torch.zeros(1, 1, 3, 3)
    scores[0, 0, 0, 2] = math.nan
    scores[0, 0, 1, 2] = math.inf
    got = dense_attention_bias(None, None, None, None, True, scores=scores)
    assert got[0, 0, 0, 2] == -math.inf and got[0, 0, 1, 2] == -math.inf
    assert not got.isnan().any()


def test_terms_are_optional():
    log_size = torch.tensor([[0.0, math.log(2.0), -math.inf]])
    q_pos, k_pos = torch.tensor([[0, 1]]), torch.tensor([[0, 1, 2]])
    only_log_size = dense_attention_bias(log_size, q_pos, k_pos, None, causal=False)
    assert only_log_size.shape == (1, 1, 2, 3) and torch.equal(only_log_size[0, 0, 1], log_size[0])
    only_causal = dense_attention_bias(None, q_pos, k_pos, None, causal=True)
    assert torch.equal(only_causal[0, 0].isneginf(), ~causal_visible(2, 3))
    assert (only_causal[0, 0][causal_visible(2, 3)] == 0).all()
    with pytest.raises(ValueError, match=r"dense_attention_bias: the bias alone \(scores=None\) takes its shape"):
        dense_attention_bias(log_size, None, None, None)
    with pytest.raises(ValueError, match="q_pos, k_pos and table come together, got only k_pos, table"):
        dense_attention_bias(log_size, None, k_pos, torch.zeros(4), scores=torch.zeros(1, 1, 2, 3))


def test_causal_visible_is_end_aligned():
    for lq, lk in [(1, 1), (1, 6), (4, 4), (3, 7), (7, 3)]:
        want = torch.ones(lq, lk, dtype=torch.bool).tril(lk - lq)  # FlashAttention's bottom-right alignment
        assert torch.equal(causal_visible(lq, lk), want)


def test_distance_bias_clamps_both_ends():
    table = torch.tensor([10.0, 11.0, 12.0])
    got = distance_bias(torch.tensor([[5]]), torch.tensor([[9, 5, 4, 3, 0, -100]]), table)
    assert got.tolist() == [[[10.0, 10.0, 11.0, 12.0, 12.0, 12.0]]]


@pytest.mark.parametrize("causal", [True, False])
def test_distances_beyond_int64_read_the_last_entry(causal):
    """q_pos near INT64_MAX minus a negative k_pos used to wrap to a negative distance and read table[0]
    (issue 14 item 5, the reference's side): the dense bias now saturates as the kernels must."""
    top, bottom = 2**63 - 1, -(2**63)
    q_pos = torch.tensor([[top, top - 1, bottom, 0, 3]])
    k_pos = torch.tensor([[-1, bottom, top, 0, -(2**62), 2**62, 2, bottom + 1]])
    table, log_size = torch.tensor([10.0, 11.0, 12.0, 13.0]), torch.zeros(1, 8)
    got = dense_attention_bias(log_size, q_pos, k_pos, table, causal)
    want = literal_bias(log_size, q_pos, k_pos, table, 5, 8, causal)  # Python ints: no wrap
    assert torch.equal(got.double(), want)
    assert got[0, 0, 0, 0] == 13.0 and got[0, 0, 2, 2] == 10.0  # top - (-1): the last entry; bottom - top: 0

def test_as_an_sdpa_mask_it_gives_the_reference_attention():
    """The bias alone, as SDPA's additive mask, reproduces reference.calibrated_attention (float64, rows with
    visible keys; rows with none are zeros in the reference and NaN in SDPA)."""
    g = torch.Generator().manual_seed(5)
    b, lq, lk, h, dh = 2, 6, 10, 4, 16
    q, k, v = (torch.randn(b, length, h, dh, generator=g, dtype=torch.float64) for length in (lq, lk, lk))
    log_size, q_pos, k_pos, table = bias_inputs(b, lq, lk, t=8, seed=6)
    log_size[:, ::5] = 0.0  # keep every row's keys visible
    want = ref.calibrated_attention(q, k, v, log_size, q_pos, k_pos, table, causal=True)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    exact = dense_attention_bias(log_size, q_pos, k_pos, table, True, scores=torch.zeros(b, 1, lq, lk, dtype=torch.float64))
    got = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=exact)
    torch.testing.assert_close(got.transpose(1, 2), want, rtol=1e-12, atol=1e-12)
    mask32 = dense_attention_bias(log_size, q_pos, k_pos, table, causal=True)  # float32: the bias rounded once
    got = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask32.double())
    torch.testing.assert_close(got.transpose(1, 2), want, rtol=1e-6, atol=1e-6)
