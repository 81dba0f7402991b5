"""``restore_ext.reduce``: RESTORE end to end, base selection then :func:`restore_ext.restore_reduce`."""
import math
from typing import Optional, Union

from torch import Tensor

from .reduction import Reduced, restore_reduce
from .select import BASE_SELECTORS, Selector, _as_int, select


def kept_count(num_tokens: int, keep_ratio: float) -> int:
    """R = round(num_tokens * keep_ratio), rounding halves up: ``floor(num_tokens * keep_ratio + 0.5)``."""
    return math.floor(num_tokens * keep_ratio + 0.5)


def reduce(
    features: Tensor,
    num_tokens: int,
    base: Union[str, Selector] = "divprune",
    keep_ratio: float = 0.5,
    scores: Optional[Tensor] = None,
    rule: str = "reference",
) -> Reduced:
    """Reduces each row of ``features`` (B, N, D) to ``num_tokens`` tokens the RESTORE way.

    The base method ``base`` (see :mod:`restore_ext.select`: ``"divprune"``, ``"cls"`` with ``scores``,
    ``"uniform"``, or a callable) keeps ``R = kept_count(num_tokens, keep_ratio)`` tokens
    (``floor(num_tokens * keep_ratio + 0.5)``: round half up; the authors use keep_ratio = 0.5). The other
    N - R tokens are merged into ``num_tokens - R`` distinctive anchors with positions preserved
    (:func:`restore_ext.restore_reduce`, SPEC §3, ``rule`` as in anchor_merge).

    SPEC §3 needs ``1 <= R < num_tokens <= N``: at least one base token and at least one merged token. So
    ``keep_ratio`` must leave both (keep_ratio = 0 or 1 raise ValueError, as does num_tokens = 1); pure
    pruning is :func:`restore_ext.select.select` alone, pure merging is :func:`restore_ext.anchor_merge`.
    """
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"reduce: features must be 3-D (B, N, D), got {shape}")
    n = features.shape[1]
    given, num_tokens = num_tokens, _as_int(num_tokens)
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
