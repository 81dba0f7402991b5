"""VisPruner (Zhang et al., ICCV 2025) as a batched base selector, as the RESTORE authors run it (docs/ops.md §3c).

``vispruner_indices(features, k, cls_attention)`` keeps, per row of ``features`` (B, N, D):

1. the ``k // 2`` *important* tokens: highest ``cls_attention`` (the [CLS] query's attention to each patch,
   mean over heads), ties to the lower index;
2. ``k - k // 2`` *diverse* tokens from the residual ones (the rest, in descending attention order), chosen by
   VisPruner's duplicate removal: while more than ``k - k // 2`` residual tokens remain, split them
   alternately (even positions A, odd positions B), give each A token its highest cosine similarity to any B
   token, drop the ``min(8, excess)`` A tokens with the highest similarity (all of A if it has fewer), and
   continue with the kept A tokens (highest similarity first, ties to the earlier position) followed by B.

Returns (B, k) int64, ascending. The float64 form that follows the authors' loop is
:func:`restore_ext.reference.vispruner_indices`; it states the two points where we had to choose a rule: ties
(the authors' argsort is unstable: we rank stably) and the rounds where their batch indexing raises (an odd
residual count, or fewer A tokens than the round wants to drop): we keep exactly the A tokens their slicing
keeps, which is what their code does wherever it runs.

Speed: the authors recompute an (R/2) x (R/2) similarity matmul every round, ``D * R^3 / 48`` flops in all.
The similarities never change between rounds, only which pairs are compared, so here the residual tokens'
cosine similarity matrix is computed once (``2 * R^2 * D`` flops, one batched matmul; memory B x R^2) and
the rounds only look values up: on the CPU all rounds run in one C++ call
(:func:`restore_ext.ops.vispruner_matching`), elsewhere as torch ops batched over B with no host sync
(:func:`matching_rounds`). The rounds are sequential by definition.
"""
import math

import torch
from torch import Tensor

from . import ops
from ._scored_inputs import check_scored_inputs, cosine_gram

ROUND_LIMIT = 8  # VisPruner removes at most this many duplicates per matching round


def descending_order(values: Tensor) -> Tensor:
    """Indices that sort each row of ``values`` from highest to lowest, equal values in index order."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices


def vispruner_rounds(residual_count: int, diverse: int):
    """How many A tokens each matching round drops, until ``diverse`` residual tokens remain.

    A round asks for ``min(8, excess)`` but has only ``ceil(R / 2)`` A tokens to drop (R <= 14 near the end).
    The count depends on N and k only, so the schedule is known before any data is looked at.
    """
    dropped = []
    while residual_count > diverse:
        r = min(ROUND_LIMIT, residual_count - diverse)
        dropped.append(r)
        residual_count -= min(r, (residual_count + 1) // 2)
    return dropped


def matching_rounds(sim: Tensor, diverse: int) -> Tensor:
    """The rounds of :func:`restore_ext.ops.vispruner_matching` as torch ops on any device, batched over B and
    without a host sync: (B, diverse) rows of ``sim`` (B, R0, R0) that survive, in their final order.

    ``sim`` holds the similarities of the tokens still in play (its "frame") and ``order`` the current residual
    order as rows of it; each A token's best B similarity is a masked maximum over its row. When the residual
    shrinks to half the frame, the frame is compacted to it, so rows stay at most twice as long as needed (the
    counts, hence the compactions, are known in advance).
    """
    b, r0, _ = sim.shape
    dev = sim.device
    ids = torch.arange(r0, device=dev).expand(b, r0)  # frame row -> row of the original sim
    order = ids
    for r in vispruner_rounds(r0, diverse):
        count, width = order.shape[1], sim.shape[1]
        if count <= width // 2:
            sim = sim.gather(1, order[:, :, None].expand(b, count, width))
            sim = sim.gather(2, order[:, None, :].expand(b, count, count))
            ids = ids.gather(1, order)
            order = torch.arange(count, device=dev).expand(b, count)
            width = count
        a, bb = order[:, 0::2], order[:, 1::2]
        in_b = torch.zeros(b, width, dtype=torch.bool, device=dev).scatter_(1, bb, True)
        rows = sim.gather(1, a[:, :, None].expand(b, a.shape[1], width))
        best = rows.masked_fill_(~in_b[:, None, :], -math.inf).amax(dim=-1)  # (B, |A|): closest B of each A
        survivors = a.gather(1, descending_order(best)[:, r:])  # empty when r >= |A|
        order = torch.cat([survivors, bb], dim=1)
    return ids.gather(1, order)


def remove_duplicates(features: Tensor, residual: Tensor, diverse: int) -> Tensor:
    """VisPruner's iterative matching over ``residual`` (B, R) token indices of ``features`` (B, N, D); returns
    (B, diverse) of them. On the CPU the rounds run in one C++ call (a dozen op launches per round otherwise)."""
    b, r0 = residual.shape
    tokens = features.gather(1, residual[:, :, None].expand(b, r0, features.shape[-1]))
    sim = cosine_gram("vispruner_indices", tokens)  # (B, R0, R0): every pair a round can compare
    if sim.device.type == "cpu":
        return residual.gather(1, ops.vispruner_matching(sim, diverse))
    return residual.gather(1, matching_rounds(sim, diverse))


def vispruner_indices(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """VisPruner's ``k`` tokens of each row of ``features`` (B, N, D), ranked by ``cls_attention`` (B, N).

    See the module docstring for the rule. ``features`` float16/bfloat16/float32/float64 (similarities in
    float32, float64 for float64 input), ``cls_attention`` any float dtype, finite; ``1 <= k <= N``.
    Returns (B, k) int64, ascending. Features must be finite (they are not read when k = N).
    """
    k = check_scored_inputs("vispruner_indices", features, k, cls_attention)
    if features.is_meta:
        return features.new_empty((features.shape[0], k), dtype=torch.long)
    important = k // 2  # the authors' important_ratio = 0.5, int(k * 0.5)
    order = descending_order(cls_attention)
    kept, residual = order[:, :important], order[:, important:]
    if residual.shape[1] > k - important:
        residual = remove_duplicates(features, residual, k - important)
    return torch.cat([kept, residual], dim=1).sort(dim=1).values
