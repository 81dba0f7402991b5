"""RESTORE's reduction (docs/ops.md §3, §3b): ``restore_reduce`` and ``reduce``, composed from the ops.

``restore_reduce`` keeps the tokens a base method chose and merges the rest; ``reduce`` runs the base method
(:mod:`restore_ext.selectors`) first. Batched end to end: no Python loop over the batch or over tokens, and no
host sync on CUDA tensors (the index checks of restore_reduce run as device-side asserts there). On meta
tensors only shapes are checked (there are no values to read) and the result is meta tensors of the right
shapes.
"""
import math
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import ops
from .selectors import BASE_SELECTORS, Selector, select
from .validation import as_int, check_features


class Reduced(NamedTuple):
    tokens: Tensor  # (B, num_out, D): retained tokens unchanged, merged tokens averaged
    size: Tensor  # (B, num_out) int64: original tokens each output stands for (rows sum to N)
    position: Tensor  # (B, num_out) int64: original index each output keeps, ascending
    source: Tensor  # (B, N) int64: output slot of each input token


def kept_count(num_tokens: int, keep_ratio: float) -> int:
    """R = round(num_tokens * keep_ratio), rounding halves up: ``floor(num_tokens * keep_ratio + 0.5)``."""
    return math.floor(num_tokens * keep_ratio + 0.5)


def _check_restore_reduce_args(features: Tensor, retained: Tensor, num_out) -> int:
    """Checks restore_reduce's arguments (docs/ops.md §3); returns num_out as an int."""
    check_features("restore_reduce", features)
    b, n, _ = features.shape
    if not isinstance(retained, Tensor) or retained.dim() != 2 or retained.shape[0] != b:
        got = tuple(retained.shape) if isinstance(retained, Tensor) else type(retained).__name__
        raise ValueError(f"restore_reduce: retained must have shape (B, R) with B = {b}, got {got}")
    if retained.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"restore_reduce: retained must be int32 or int64, got {retained.dtype}")
    if retained.device != features.device:
        raise ValueError(f"restore_reduce: retained is on {retained.device} but features on {features.device}")
    r = retained.shape[1]
    given, num_out = num_out, as_int(num_out)
    if num_out is None or not (r < num_out <= n):
        raise ValueError(f"restore_reduce: num_out must satisfy R = {r} < num_out <= N = {n}, got num_out = {given!r}")
    if not (b and r) or retained.is_meta:  # nothing to read, or no values to read (shapes are checked above)
        return num_out
    in_range = ((retained >= 0) & (retained < n)).all()
    distinct = (retained.sort(dim=1).values.diff(dim=1) != 0).all()
    if retained.is_cuda:
        # Device-side asserts: reading the checks back would stall the stream on every call. A bad index
        # still stops the program (a CUDA device assert) with this message, at the next sync.
        torch._assert_async(in_range, f"restore_reduce: retained indices must lie in [0, N = {n})")
        torch._assert_async(distinct, "restore_reduce: retained indices must be distinct within each row")
        return num_out
    if not bool(in_range):
        lo, hi = int(retained.min()), int(retained.max())
        raise ValueError(f"restore_reduce: retained indices must lie in [0, N = {n}), got values in [{lo}, {hi}]")
    if not bool(distinct):
        raise ValueError("restore_reduce: retained indices must be distinct within each row")
    return num_out


def restore_reduce(features: Tensor, retained: Tensor, num_out: int, rule: str = "reference") -> Reduced:
    """Keep ``retained`` tokens, merge the other N - R into ``num_out - R`` anchors, preserve positions.

    ``features`` (B, N, D); ``retained`` (B, R) distinct indices in [0, N) from a base method;
    ``R < num_out <= N``. Merged tokens keep the lower median of their members' original indices; all
    outputs are ordered by position. See docs/ops.md §3.
    """
    num_out = _check_restore_reduce_args(features, retained, num_out)
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


def reduce(
    features: Tensor,
    num_tokens: int,
    base: Union[str, Selector] = "divprune",
    keep_ratio: float = 0.5,
    scores: Optional[Tensor] = None,
    rule: str = "reference",
) -> Reduced:
    """Reduces each row of ``features`` (B, N, D) to ``num_tokens`` tokens the RESTORE way (docs/ops.md §3b).

    The base method ``base`` (see :mod:`restore_ext.selectors`: ``"divprune"``; ``"cls"``, ``"vispruner"``,
    ``"holov"`` with ``scores``; ``"uniform"``; or a callable) keeps ``R = kept_count(num_tokens, keep_ratio)`` tokens
    (``floor(num_tokens * keep_ratio + 0.5)``: round half up; the authors use keep_ratio = 0.5). The other
    N - R tokens are merged into ``num_tokens - R`` distinctive anchors with positions preserved
    (:func:`restore_reduce`, docs/ops.md §3, ``rule`` as in anchor_merge).

    docs/ops.md §3 needs ``1 <= R < num_tokens <= N``: at least one base token and at least one merged token.
    So ``keep_ratio`` must leave both (keep_ratio = 0 or 1 raise ValueError, as does num_tokens = 1); pure
    pruning is :func:`restore_ext.select` alone, pure merging is :func:`restore_ext.anchor_merge`.
    """
    check_features("reduce", features)
    n = features.shape[1]
    given, num_tokens = num_tokens, as_int(num_tokens)
    if num_tokens is None or not 2 <= num_tokens <= n:
        raise ValueError(
            f"reduce: num_tokens must be an int with 2 <= num_tokens <= N = {n} (one kept and one merged token "
            f"at least), got {given!r}"
        )
    if not isinstance(keep_ratio, (int, float)) or not 0.0 <= keep_ratio <= 1.0:
        raise ValueError(f"reduce: keep_ratio must be a number in [0, 1], got {keep_ratio!r}")
    if not callable(base) and base not in BASE_SELECTORS:
        raise ValueError(f"reduce: base must be one of {sorted(BASE_SELECTORS)} or a callable, got {base!r}")
    r = kept_count(num_tokens, keep_ratio)
    if not 1 <= r < num_tokens:
        raise ValueError(
            f"reduce: keep_ratio = {keep_ratio} keeps R = floor({num_tokens} * {keep_ratio} + 0.5) = {r} base "
            f"tokens; RESTORE needs 1 <= R < num_tokens = {num_tokens} (at least one kept and one merged token)"
        )
    retained = select(features, r, base, scores)
    return restore_reduce(features, retained, num_tokens, rule)
