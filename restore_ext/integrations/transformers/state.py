"""Per-forward attention state (``RestoreState``) and per-cache key state (``KeyState``).

Positions are (B, L) for 1-D RoPE or (B, L, S) for multi-axis RoPE (S = 3 for M-RoPE); the distance table is then
(T,) or (S, T). Everything here is shape-agnostic in that trailing axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


def _row_mask(rows: Tensor, like: Tensor) -> Tensor:
    """(B,) -> broadcastable against ``like`` (B, L) or (B, L, S)."""
    return rows.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class RestoreState:
    """What one forward's attention calls need; transformers hands it to every attention call as ``restore_state``.

    Key tensors cover the whole KV cache after this forward's tokens are appended (Lk = cached + new)."""

    log_size: Tensor  # (B, Lk) float32: log(size) of each key for layers >= 1; -inf for padding
    log_size_first: Tensor  # (B, Lk) float32: layer 0's log(size) (visual keys uniform N / num_tokens)
    k_pos: Tensor  # (B, Lk[, S]) int64: original position of each key
    q_pos: Tensor  # (B, Lq[, S]) int64: original position of each query
    visual: Tensor  # (B, Lk) bool: key is a (reduced) visual token
    table: Optional[Tensor]  # (T,) or (S, T) float32, or None when this forward adds no distance bias
    bias_rows: Optional[Tensor]  # (B,) bool: rows that get the table (rows that hold a reduced visual item)
    calibrate: bool
    prompt: Optional[object] = None  # this forward's shortening.ShortenedPrompt (extras for family hooks)
    layers_run: set = field(default_factory=set)  # layer indices whose attention consumed this state

    def __post_init__(self):
        # Rows without a reduced item get no distance bias: both positions 0 there make every distance 0, where the
        # table is exactly 0 (log(2 - 1)); causality comes from the token order, not from positions.
        self._bias_q_pos, self._bias_k_pos = self.q_pos, self.k_pos
        if self.table is not None and self.bias_rows is not None and not bool(self.bias_rows.all()):
            self._bias_q_pos = torch.where(_row_mask(self.bias_rows, self.q_pos), self.q_pos, 0)
            self._bias_k_pos = torch.where(_row_mask(self.bias_rows, self.k_pos), self.k_pos, 0)

    @property
    def num_keys(self) -> int:
        return self.k_pos.shape[1]

    @property
    def num_queries(self) -> int:
        return self.q_pos.shape[1]

    def attention_bias_args(self, layer_idx: int):
        """(log_size, q_pos, k_pos, table) for ``calibrated_attention`` at layer ``layer_idx``."""
        log_size = self.log_size_first if layer_idx == 0 else self.log_size
        if self.table is None:
            return log_size, None, None, None
        return log_size, self._bias_q_pos, self._bias_k_pos, self.table


@dataclass
class KeyState:
    """Per-key state of one KV cache (or of one forward's new keys), grown in step with the cache."""

    log_size: Tensor  # (B, Lk) float32, -inf for padding
    log_size_first: Tensor  # (B, Lk) float32
    pos: Tensor  # (B, Lk[, S]) int64
    visual: Tensor  # (B, Lk) bool
    next_pos: Tensor  # (B,) int64: original position where the next token continues
    reduced_rows: Tensor  # (B,) bool: rows whose prompt held a reduced visual item
    any_reduced: bool = False  # reduced_rows.any(), known on the host (no device sync in decode steps)

    @property
    def length(self) -> int:
        return self.pos.shape[1]

    @property
    def batch(self) -> int:
        return self.pos.shape[0]

    @property
    def valid(self) -> Tensor:
        return torch.isfinite(self.log_size)

    def then(self, new: "KeyState") -> "KeyState":
        """This cache's keys followed by ``new`` (the keys one forward appends)."""
        return KeyState(
            torch.cat([self.log_size, new.log_size], 1),
            torch.cat([self.log_size_first, new.log_size_first], 1),
            torch.cat([self.pos, new.pos], 1),
            torch.cat([self.visual, new.visual], 1),
            torch.maximum(self.next_pos, new.next_pos),
            self.reduced_rows | new.reduced_rows,
            self.any_reduced or new.any_reduced,
        )
