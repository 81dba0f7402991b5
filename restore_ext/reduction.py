"""RESTORE's reduction (SPEC §3) and the distance table (SPEC §4), composed from the ops.

Batched end to end: no Python loop over the batch or over tokens, and no host sync on CUDA tensors (the
index checks of restore_reduce run as device-side asserts there).
"""
from typing import NamedTuple

import torch
from torch import Tensor

from . import ops


class Reduced(NamedTuple):
    tokens: Tensor  # (B, num_out, D): retained tokens unchanged, merged tokens averaged
    size: Tensor  # (B, num_out) int64: original tokens each output stands for (rows sum to N)
    position: Tensor  # (B, num_out) int64: original index each output keeps, ascending
    source: Tensor  # (B, N) int64: output slot of each input token


def _check_reduce_args(features: Tensor, retained: Tensor, num_out: int) -> None:
    if features.dim() != 3:
        raise ValueError(f"restore_reduce: features must be 3-D (B, N, D), got shape {tuple(features.shape)}")
    b, n, _ = features.shape
    if retained.dim() != 2 or retained.shape[0] != b:
        raise ValueError(f"restore_reduce: retained must have shape (B, R) with B = {b}, got {tuple(retained.shape)}")
    if retained.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"restore_reduce: retained must be int32 or int64, got {retained.dtype}")
    if retained.device != features.device:
        raise ValueError(f"restore_reduce: retained is on {retained.device} but features on {features.device}")
    r = retained.shape[1]
    if not (r < num_out <= n):
        raise ValueError(f"restore_reduce: num_out must satisfy R = {r} < num_out <= N = {n}, got num_out = {num_out}")
    if b and r:
        in_range = ((retained >= 0) & (retained < n)).all()
        distinct = (retained.sort(dim=1).values.diff(dim=1) != 0).all()
        if retained.is_cuda:
            # Device-side asserts: reading the checks back would stall the stream on every call. A bad index
            # still stops the program (a CUDA device assert) with this message, at the next sync.
            torch._assert_async(in_range, f"restore_reduce: retained indices must lie in [0, N = {n})")
            torch._assert_async(distinct, "restore_reduce: retained indices must be distinct within each row")
            return
        if not bool(in_range):
            lo, hi = int(retained.min()), int(retained.max())
            raise ValueError(f"restore_reduce: retained indices must lie in [0, N = {n}), got values in [{lo}, {hi}]")
        if not bool(distinct):
            raise ValueError("restore_reduce: retained indices must be distinct within each row")


def restore_reduce(features: Tensor, retained: Tensor, num_out: int, rule: str = "reference") -> Reduced:
    """Keep ``retained`` tokens, merge the other N - R into ``num_out - R`` anchors, preserve positions.

    ``features`` (B, N, D); ``retained`` (B, R) distinct indices in [0, N) from a base method;
    ``R < num_out <= N``. Merged tokens keep the lower median of their members' original indices; all
    outputs are ordered by position. See SPEC.md §3.
    """
    _check_reduce_args(features, retained, num_out)
    b, n, d = features.shape
    r = retained.shape[1]
    retained = retained.long()
    dev = features.device
    rows = torch.arange(b, device=dev)[:, None]

    is_rest = torch.ones(b, n, dtype=torch.bool, device=dev)
    is_rest[rows, retained] = False
    # The N - R merged tokens of each row in ascending index order: a stable sort puts them (key 0) first.
    # (nonzero() would need the count on the host, a stream sync on CUDA; the count is known: N - R.)
    rest = torch.sort((~is_rest).to(torch.uint8), dim=1, stable=True).indices[:, : n - r]

    k = num_out - r
    merged = ops.anchor_merge(features.gather(1, rest[:, :, None].expand(b, n - r, d)), k, rule)

    # Lower median of each slot's original indices: sort members by (slot, index), take element (m-1)//2.
    member_order = (merged.assign * n + rest).sort(dim=1).values % n
    first = merged.size.cumsum(1) - merged.size
    merged_pos = member_order.gather(1, first + (merged.size - 1) // 2)

    position = torch.cat([retained, merged_pos], dim=1)
    position, order = position.sort(dim=1)
    tokens = torch.cat([features.gather(1, retained[:, :, None].expand(b, r, d)), merged.merged], dim=1)
    tokens = tokens.gather(1, order[:, :, None].expand(b, num_out, d))
    size = torch.cat([torch.ones_like(retained), merged.size], dim=1).gather(1, order)

    slot_of = torch.empty_like(order)  # pre-sort slot -> output slot
    slot_of.scatter_(1, order, torch.arange(num_out, device=dev).expand(b, num_out).contiguous())
    source = torch.empty(b, n, dtype=torch.long, device=dev)
    source[rows, retained] = slot_of[:, :r]
    source.scatter_(1, rest, slot_of.gather(1, r + merged.assign))
    return Reduced(tokens, size, position, source)


def distance_bias_table(max_distance: int, inv_freq: Tensor) -> Tensor:
    """``table[d] = log(2 - mean_i cos(d * inv_freq[i]))`` for d < ``max_distance``, float32 (SPEC §4).

    ``inv_freq`` is the model's RoPE inverse frequencies (for default RoPE
    ``theta ** (-arange(0, rotary_dim, 2) / rotary_dim)``). The result lives on ``inv_freq``'s device.
    """
    if int(max_distance) < 1:
        raise ValueError(f"distance_bias_table: max_distance must be >= 1, got {max_distance}")
    if not isinstance(inv_freq, Tensor) or inv_freq.dim() != 1 or inv_freq.numel() == 0:
        raise ValueError(
            f"distance_bias_table: inv_freq must be a non-empty 1-D tensor, got "
            f"{tuple(inv_freq.shape) if isinstance(inv_freq, Tensor) else type(inv_freq).__name__}"
        )
    if not inv_freq.is_floating_point():
        raise ValueError(f"distance_bias_table: inv_freq must be floating point, got {inv_freq.dtype}")
    dist = torch.arange(int(max_distance), dtype=torch.float64, device=inv_freq.device)
    decay = torch.cos(torch.outer(dist, inv_freq.double())).mean(-1)
    return torch.log(2 - decay).float()


def default_inv_freq(rotary_dim: int, theta: float = 10000.0) -> Tensor:
    """Inverse frequencies of default (unscaled) RoPE: ``theta ** (-arange(0, rotary_dim, 2) / rotary_dim)``."""
    return theta ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)


