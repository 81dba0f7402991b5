"""Reduce the visual tokens of several items (images, videos) of equal token count in one batched call, and carry
per-token extras (Qwen3-VL's DeepStack features) through the same assignment."""
from __future__ import annotations

import torch
from torch import Tensor

import restore_ext

from .settings import RestoreSettings


def reduce_tokens(features: Tensor, settings: RestoreSettings) -> "restore_ext.Reduced":
    """(M, N, D) tokens of M items -> ``Reduced`` with ``settings.budget(N)`` tokens per item.

    RESTORE proper (:func:`restore_ext.reduce`) when the budget holds both kept and merged tokens; the two ends of
    keep_ratio, which the demo compares against, are pure merging (R = 0) and pruning alone (R = num_out, the
    dropped tokens get source -1).
    """
    m, n, d = features.shape
    num_out = settings.budget(n)
    r = settings.kept(num_out)
    if 1 <= r < num_out:
        return restore_ext.reduce(
            features, num_out, base=settings.base, keep_ratio=settings.keep_ratio, rule=settings.rule
        )
    if r == 0:
        nothing_kept = features.new_empty((m, 0), dtype=torch.long)
        return restore_ext.restore_reduce(features, nothing_kept, num_out, settings.rule)
    retained = restore_ext.select(features, r, settings.base)
    source = torch.full((m, n), -1, dtype=torch.long, device=features.device)
    source.scatter_(1, retained, torch.arange(r, device=features.device).expand(m, r).contiguous())
    tokens = features.gather(1, retained[:, :, None].expand(m, r, d))
    return restore_ext.Reduced(tokens, torch.ones_like(retained), retained, source)


def reduce_like(extra: Tensor, reduced: "restore_ext.Reduced") -> Tensor:
    """(M, N, ...) per-token values -> (M, K, ...) with the assignment of ``reduced``: a kept token keeps its value,
    a merged slot gets the plain mean of its members (the tokens it stands for), a pruned token is dropped."""
    m, n = extra.shape[:2]
    k = reduced.position.shape[1]
    flat = extra.reshape(m, n, -1)
    acc = torch.float64 if flat.dtype == torch.float64 else torch.float32
    member = reduced.source >= 0
    slot = reduced.source.clamp_min(0)
    total = flat.new_zeros((m, k, flat.shape[2]), dtype=acc)
    total.scatter_add_(1, slot[:, :, None].expand_as(flat), flat.to(acc) * member[:, :, None])
    count = torch.zeros(m, k, dtype=acc, device=extra.device).scatter_add_(1, slot, member.to(acc))
    return (total / count[:, :, None]).to(extra.dtype).reshape(m, k, *extra.shape[2:])
