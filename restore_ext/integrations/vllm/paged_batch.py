"""Calibrated attention over a paged KV cache for a whole vLLM batch at once (no Python loop per request).

vLLM hands an attention layer the queries of all requests in one flat (T, H, Dh) tensor plus, per request, where
its queries start and how long its context is; keys live in fixed-size blocks of a shared cache. This module
turns that into at most two padded batches for :func:`restore_ext.calibrated_attention`: the single-query rows
(decode) and the multi-query rows (prefill chunks), so a decode row never pays for the longest prefill.

Padding is on the left: a row's queries and keys are right-aligned, which keeps the op's bottom-right causal
rule exact (query ``i`` of a request sees its keys ``<= i + context - queries``); padded keys get
``log_size = -inf`` and padded queries are dropped. Per-key RESTORE state (original position, ``log(size)``) is
read by KV slot from :class:`SlotState`, which lives beside the cache and is written in step with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import restore_ext

UNREACHABLE = -(1 << 40)  # a query position whose distance to every key clamps to 0, where the table is 0


class SlotState:
    """Per-KV-slot RESTORE state: original position rows, log(size) of layers >= 1 and of layer 0."""

    def __init__(self, num_slots: int, pos_rows: int, device):
        self.pos = torch.zeros(num_slots, pos_rows, dtype=torch.int64, device=device)
        self.log_size = torch.zeros(num_slots, dtype=torch.float32, device=device)
        self.log_size_first = torch.zeros(num_slots, dtype=torch.float32, device=device)

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
    q_pos: Optional[Tensor]  # (B, Lq) int64, UNREACHABLE for queries without the table; None: no table at all
    k_pos: Optional[Tensor]  # (B, Lk) int64


def group_bias(rows: PaddedRows, state: SlotState, q_pos: Tensor, q_table: Tensor, want_table: bool) -> GroupBias:
    """Per-key state read by slot; q_pos (T,) / q_table (T,) bool of the step's flat queries."""
    neg_inf = torch.full(rows.key_slots.shape, -math.inf, device=rows.key_slots.device)
    log_size = torch.where(rows.key_valid, state.log_size[rows.key_slots], neg_inf)
    log_size_first = torch.where(rows.key_valid, state.log_size_first[rows.key_slots], neg_inf)
    qp = kp = None
    if want_table:
        pad_pos = torch.cat([torch.where(q_table, q_pos, UNREACHABLE), q_pos.new_full((1,), UNREACHABLE)])
        qp = pad_pos[rows.query_index]
        if bool((qp != UNREACHABLE).any()):
            kp = state.pos[rows.key_slots, 0]
        else:
            qp = None
    return GroupBias(rows, log_size, log_size_first, qp, kp)


def attend(query: Tensor, kv_cache: Tensor, groups: list[GroupBias], table: Optional[Tensor], first_layer: bool,
           scale: float, out: Tensor) -> None:
    """query (T, H, Dh) -> out[:T] (T, H, Dh) for every request of the step."""
    dh = query.shape[-1]
    padded = torch.cat([query, query.new_zeros((1,) + query.shape[1:])])
    for g in groups:
        k, v = gather_kv(kv_cache, g.rows.key_slots, dh)
        q = padded[g.rows.query_index]
        use_table = g.q_pos is not None
        res = restore_ext.calibrated_attention(
            q, k.to(q.dtype), v.to(q.dtype), g.log_size_first if first_layer else g.log_size,
            g.q_pos if use_table else None, g.k_pos if use_table else None, table if use_table else None,
            causal=True, scale=scale,
        )
        out[g.rows.query_index[g.rows.query_valid]] = res[g.rows.query_valid].to(out.dtype)
