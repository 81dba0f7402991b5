"""Calibrated attention over a paged KV cache for a whole vLLM batch at once (no Python loop per request).

vLLM hands an attention layer the queries of all requests in one flat (T, H, Dh) tensor plus, per request, where
its queries start and how long its context is; keys live in fixed-size blocks of a shared cache. This module
turns that into at most two padded batches for :func:`restore_ext.calibrated_attention`: the single-query rows
(decode) and the multi-query rows (prefill chunks), so a decode row never pays for the longest prefill.

Padding is on the left: a row's queries and keys are right-aligned, which keeps the op's bottom-right causal
rule exact (query ``i`` of a request sees its keys ``<= i + context - queries``); padded keys get
``log_size = -inf`` and padded queries are dropped. Per-key RESTORE state (original position, ``log(size)``) is
read by KV slot from :class:`SlotState`, which lives beside the cache and is written in step with it. Positions
have P rows per token: 1 for 1-D RoPE (LLaVA), 3 for M-RoPE (t, h, w; Qwen2.5-VL), as the op takes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import restore_ext

class SlotState:
    """Per-KV-slot RESTORE state: original position rows, log(size) of layers >= 1 and of layer 0, and the largest
    position ever written (the distance table must cover every distance between keys and queries)."""

    def __init__(self, num_slots: int, pos_rows: int, device):
        self.pos = torch.zeros(num_slots, pos_rows, dtype=torch.int64, device=device)
        self.log_size = torch.zeros(num_slots, dtype=torch.float32, device=device)
        self.log_size_first = torch.zeros(num_slots, dtype=torch.float32, device=device)
        self.max_pos = 0

    @property
    def num_slots(self) -> int:
        return self.pos.shape[0]

    def write(self, slots: Tensor, pos: Tensor, log_size: Tensor, log_size_first: Tensor) -> None:
        """slots (T,) (negative: token not cached, e.g. padding), pos (T, rows), log sizes (T,)."""
        keep = slots >= 0
        s = slots[keep].long()
        self.pos[s] = pos[keep]
        self.log_size[s] = log_size[keep].float()
        self.log_size_first[s] = log_size_first[keep].float()
        if s.numel():
            self.max_pos = max(self.max_pos, int(pos[keep].max()))


@dataclass
class PaddedRows:
    """Requests of one kind (decode or prefill) as a padded batch."""

    query_index: Tensor  # (B, Lq) int64 row of the step's flat queries; padding -> num_tokens (a zero row)
    query_valid: Tensor  # (B, Lq) bool
    key_slots: Tensor  # (B, Lk) int64 KV slot; padding -> 0
    key_valid: Tensor  # (B, Lk) bool


def split_and_pad(query_start_loc: Tensor, seq_lens: Tensor, block_table: Tensor, block_size: int,
                  num_tokens: int) -> list[PaddedRows]:
    """The batch's requests as at most two padded batches: single-query rows and multi-query rows."""
    dev = block_table.device
    qsl = query_start_loc.to(dev).long()
    q_lens = qsl[1:] - qsl[:-1]
    seq = seq_lens.to(dev).long()
    groups = []
    for rows in ((q_lens == 1).nonzero().flatten(), (q_lens > 1).nonzero().flatten()):
        if rows.numel() == 0:
            continue
        groups.append(_pad(qsl[rows], q_lens[rows], seq[rows], block_table[rows], block_size, num_tokens))
    return groups


def _pad(q_start: Tensor, q_len: Tensor, seq_len: Tensor, blocks: Tensor, block_size: int,
         num_tokens: int) -> PaddedRows:
    lq, lk = int(q_len.max()), int(seq_len.max())
    t = torch.arange(lq, device=q_len.device)[None, :]
    q_local = t - (lq - q_len)[:, None]  # index among the request's queries, negative on padding
    query_valid = q_local >= 0
    query_index = torch.where(query_valid, q_start[:, None] + q_local, num_tokens)
    j = torch.arange(lk, device=q_len.device)[None, :]
    k_local = j - (lk - seq_len)[:, None]
    key_valid = k_local >= 0
    k_local = k_local.clamp_min(0)
    block = blocks.long().gather(1, k_local // block_size)
    key_slots = torch.where(key_valid, block * block_size + k_local % block_size, 0)
    return PaddedRows(query_index, query_valid, key_slots, key_valid)


def write_kv(kv_cache: Tensor, slots: Tensor, key: Tensor, value: Tensor) -> None:
    """kv_cache (blocks, Hkv, block_size, 2 * Dh): K in [:Dh], V in [Dh:] of each slot; key/value (T, Hkv, Dh)."""
    bs, dh = kv_cache.shape[2], key.shape[-1]
    n = slots.shape[0]
    keep = slots >= 0
    s = slots[keep].long()
    blk, off = s // bs, s % bs
    kv_cache[blk, :, off, :dh] = key[:n][keep].to(kv_cache.dtype)
    kv_cache[blk, :, off, dh:] = value[:n][keep].to(kv_cache.dtype)


def gather_kv(kv_cache: Tensor, slots: Tensor, head_size: int) -> tuple[Tensor, Tensor]:
    """(B, Lk) slots -> K and V (B, Lk, Hkv, Dh), read from the cache (views of one gathered copy)."""
    bs = kv_cache.shape[2]
    kv = kv_cache[slots // bs, :, slots % bs]  # advanced indices around a slice: (B, Lk, Hkv, 2 Dh)
    return kv[..., :head_size], kv[..., head_size:]


@dataclass
class GroupBias:
    """What calibrated_attention adds for one padded batch in one step (shared by every layer)."""

    rows: PaddedRows
    log_size: Tensor  # (B, Lk) float32, -inf on padding (layers >= 1)
    log_size_first: Tensor  # (B, Lk) float32 (layer 0)
    q_pos: Optional[Tensor]  # (B, Lq) or (B, Lq, P) int64; None: no query of the batch adds the table
    k_pos: Optional[Tensor]  # (B, Lk) or (B, Lk, P) int64
    plain: Optional[Tensor] = None  # (B, Lq) bool: queries of a table row that must not add it; None: no such


def group_bias(rows: PaddedRows, state: SlotState, q_pos: Tensor, q_table: Tensor, want_table: bool) -> GroupBias:
    """Per-key state read by slot; q_pos (T, P) or (T,) / q_table (T,) bool of the step's flat queries.

    Which queries add the distance table is a per-query fact (a request's prompt tokens do, its generated tokens
    do not), but the keys of a row are shared by its queries. A row none of whose queries adds the table gets
    position 0 for its queries and keys: every distance is 0, where the table's bias is exactly 0 (one axis or
    several, since the decay shares add up to 1 at distance 0). A row that mixes both kinds (a recomputed chunk
    after preemption holds prompt and generated tokens) is attended twice, with and without the table, and each
    query takes its own (``plain``); steps without such a row pay nothing for it."""
    neg_inf = torch.full(rows.key_slots.shape, -math.inf, device=rows.key_slots.device)
    log_size = torch.where(rows.key_valid, state.log_size[rows.key_slots], neg_inf)
    log_size_first = torch.where(rows.key_valid, state.log_size_first[rows.key_slots], neg_inf)
    if not want_table:
        return GroupBias(rows, log_size, log_size_first, None, None)
    if q_pos.dim() == 1:
        q_pos = q_pos[:, None]
    qt = torch.cat([q_table, q_table.new_zeros(1)])[rows.query_index]  # (B, Lq); padding never adds it
    row_table = qt.any(1)
    if not bool(row_table.any()):
        return GroupBias(rows, log_size, log_size_first, None, None)
    qp = torch.cat([q_pos, q_pos.new_zeros((1,) + q_pos.shape[1:])])[rows.query_index]  # (B, Lq, P)
    kp = state.pos[rows.key_slots]  # (B, Lk, P)
    qp = torch.where(row_table[:, None, None], qp, 0)
    kp = torch.where(row_table[:, None, None], kp, 0)
    plain = row_table[:, None] & ~qt & rows.query_valid
    if qp.shape[-1] == 1:  # 1-D RoPE: the op's (B, L) positions with a (T,) table
        qp, kp = qp[..., 0], kp[..., 0]
    return GroupBias(rows, log_size, log_size_first, qp, kp, plain if bool(plain.any()) else None)


def attend(query: Tensor, kv_cache: Tensor, groups: list[GroupBias], table: Optional[Tensor], first_layer: bool,
           scale: float, out: Tensor) -> None:
    """query (T, H, Dh) -> out[:T] (T, H, Dh) for every request of the step."""
    dh = query.shape[-1]
    padded = torch.cat([query, query.new_zeros((1,) + query.shape[1:])])
    for g in groups:
        k, v = gather_kv(kv_cache, g.rows.key_slots, dh)
        q = padded[g.rows.query_index]
        k, v = k.to(q.dtype), v.to(q.dtype)
        log_size = g.log_size_first if first_layer else g.log_size
        use_table = g.q_pos is not None
        res = restore_ext.calibrated_attention(
            q, k, v, log_size, g.q_pos if use_table else None, g.k_pos if use_table else None,
            table if use_table else None, causal=True, scale=scale,
        )
        if use_table and g.plain is not None:
            res_plain = restore_ext.calibrated_attention(q, k, v, log_size, causal=True, scale=scale)
            res = torch.where(g.plain[:, :, None, None], res_plain, res)
        out[g.rows.query_index[g.rows.query_valid]] = res[g.rows.query_valid].to(out.dtype)
