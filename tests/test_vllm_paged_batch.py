"""The vLLM plugin's batched attention over a paged KV cache (restore_ext/integrations/vllm/paged_batch.py), against
the float64 reference run request by request on contiguous K/V. Needs no vLLM: the module is plain torch."""
import math

import pytest
import torch

from restore_ext import distance_bias_table, default_inv_freq
from restore_ext.attention_bias import mrope_axis_of_freq, rope_decay_tables
from restore_ext.integrations.vllm.paged_batch import (
    SlotState, attend, gather_kv, group_bias, split_and_pad, write_kv,
)
from restore_ext.reference import calibrated_attention as reference_attention


def _batch(q_lens, ctx_before, block_size, num_blocks, h, hkv, dh, gen, pos_rows=1):
    """Random requests on a shuffled paged cache: each has ctx_before cached keys and q_lens new queries."""
    seq_lens = [c + q for c, q in zip(ctx_before, q_lens)]
    max_blocks = max(math.ceil(s / block_size) for s in seq_lens)
    num_blocks = max(num_blocks, sum(math.ceil(s / block_size) for s in seq_lens) + 3)  # spare blocks stay unused
    perm = torch.randperm(num_blocks, generator=gen)
    block_table = torch.zeros(len(q_lens), max_blocks, dtype=torch.int32)
    used = 0
    for i, s in enumerate(seq_lens):
        n = math.ceil(s / block_size)
        block_table[i, :n] = perm[used:used + n].int()
        used += n
    kv = torch.randn(num_blocks, hkv, block_size, 2 * dh, generator=gen)
    keys = [torch.randn(s, hkv, dh, generator=gen) for s in seq_lens]
    values = [torch.randn(s, hkv, dh, generator=gen) for s in seq_lens]
    state = SlotState(num_blocks * block_size, pos_rows, "cpu")
    if pos_rows == 1:
        pos = [torch.sort(torch.randperm(4 * s, generator=gen)[:s]).values for s in seq_lens]  # gapped, increasing
    else:  # M-RoPE (t, h, w): any order per axis, as an image's h / w ids are
        pos = [torch.randint(0, 4 * s, (s, pos_rows), generator=gen) for s in seq_lens]
    log_size = [torch.rand(s, generator=gen) * 2 for s in seq_lens]
    for i, s in enumerate(seq_lens):
        idx = torch.arange(s)
        slots = block_table[i, idx // block_size].long() * block_size + idx % block_size
        write_kv(kv, slots, keys[i], values[i])
        state.write(slots, pos[i].view(s, pos_rows), log_size[i], log_size[i] / 2)
    qsl = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32)
    query = torch.randn(int(qsl[-1]), h, dh, generator=gen)
    return dict(seq_lens=torch.tensor(seq_lens, dtype=torch.int32), block_table=block_table, kv=kv, keys=keys,
                values=values, state=state, pos=pos, log_size=log_size, qsl=qsl, query=query)


@pytest.mark.parametrize("pos_rows", [1, 3], ids=["1-D", "M-RoPE"])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("first_layer", [False, True])
def test_attend_equals_per_request_reference(block_size, first_layer, pos_rows):
    """Per-query table choice in any mix, also within one request (a recomputed chunk of prompt and generated
    tokens); with M-RoPE (t, h, w) positions and the per-axis tables of docs/ops.md §5b."""
    gen = torch.Generator().manual_seed(block_size + 7 * first_layer + 100 * pos_rows)
    q_lens, ctx = [1, 5, 1, 12, 3], [9, 0, 30, 7, 2]  # decodes and prefill chunks, with and without context
    h, hkv, dh = 4, 2, 16
    b = _batch(q_lens, ctx, block_size, 64, h, hkv, dh, gen, pos_rows)
    n = b["query"].shape[0]
    q_pos = torch.cat([p[c:] for p, c in zip(b["pos"], ctx)])
    q_table = torch.rand(n, generator=gen) < 0.6  # any mix: the table is a per-query choice
    if pos_rows == 1:
        table = distance_bias_table(256, default_inv_freq(dh))
    else:
        table = rope_decay_tables(256, default_inv_freq(dh), mrope_axis_of_freq([2, 3, 3], dh // 2, False))
    groups = [group_bias(r, b["state"], q_pos, q_table, True)
              for r in split_and_pad(b["qsl"], b["seq_lens"], b["block_table"], block_size, n)]
    out = torch.full((n + 3, h, dh), float("nan"))  # rows past n are padding vLLM may hand over
    attend(b["query"], b["kv"], groups, table, first_layer, 0.3, out)
    for i, c in enumerate(ctx):
        s, e = int(b["qsl"][i]), int(b["qsl"][i + 1])
        ls = b["log_size"][i] / (2 if first_layer else 1)
        args = (b["query"][None, s:e], b["keys"][i][None], b["values"][i][None], ls[None])
        with_table = reference_attention(*args, b["pos"][i][None, c:], b["pos"][i][None], table, scale=0.3)
        without = reference_attention(*args, scale=0.3)
        want = torch.where(q_table[s:e, None, None], with_table[0], without[0])
        torch.testing.assert_close(out[s:e].double(), want, atol=2e-5, rtol=2e-5)
    assert torch.isnan(out[n:]).all()  # padding rows untouched


def test_split_and_pad_groups_decodes_apart_and_aligns_right():
    gen = torch.Generator().manual_seed(0)
    b = _batch([1, 3, 1], [4, 2, 0], 2, 16, 2, 1, 8, gen)
    groups = split_and_pad(b["qsl"], b["seq_lens"], b["block_table"], 2, 5)
    assert [g.query_index.shape for g in groups] == [(2, 1), (1, 3)]
    assert groups[0].query_index.flatten().tolist() == [0, 4]
    assert groups[0].key_valid.tolist() == [[True] * 5, [False] * 4 + [True]]
    k, _ = gather_kv(b["kv"], groups[1].key_slots, 8)
    torch.testing.assert_close(k[0], b["keys"][1])


def test_queries_without_table_ignore_positions():
    # group_bias drops q_pos/k_pos entirely when no query of a batch takes the table
    gen = torch.Generator().manual_seed(1)
    b = _batch([2, 1], [3, 3], 4, 8, 2, 2, 8, gen)
    rows = split_and_pad(b["qsl"], b["seq_lens"], b["block_table"], 4, 3)
    g = [group_bias(r, b["state"], torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool), True)
         for r in rows]
    assert all(x.q_pos is None and x.k_pos is None for x in g)
    assert all(bool(torch.isinf(x.log_size[~x.rows.key_valid]).all()) for x in g)
