"""VisPruner (Zhang et al., ICCV 2025) as a batched base selector, as the RESTORE authors run it.

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
cosine similarity matrix is computed once (``2 * R^2 * D`` flops) and each round gathers the A x B block of
it. The rounds themselves are sequential by definition; everything inside one is batched over B.
"""
import math
from typing import Tuple

import torch
from torch import Tensor

from ._scored_inputs import check_scored_inputs, cosine_gram

ROUND_LIMIT = 8  # VisPruner removes at most this many duplicates per matching round
NEIGHBOURS = 16  # length of each token's list of most similar tokens; a row whose list has no B token is rare
MIN_NEIGHBOURS = 8
DIRECT_FRAME = 64  # at or below this many tokens in play, A x B is gathered directly


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


def closest_in_b(sim: Tensor, near: Tuple[Tensor, Tensor], a: Tensor, bb: Tensor) -> Tensor:
    """Each A token's highest similarity to a B token: (B, |A|) from ``sim`` (B, F, F) and the rows' top lists.

    ``near`` holds every row's ``c`` highest similarities (values, columns; descending). The first B token in
    a row's list carries that row's maximum over B: every token outside the list is no more similar. Only rows
    whose list holds no B token read their full row of ``sim``.
    """
    near_val, near_idx = near
    nb, na, c = a.shape[0], a.shape[1], near_idx.shape[-1]
    frame = sim.shape[1]
    in_b = torch.zeros(sim.shape[:2], dtype=torch.bool, device=sim.device).scatter_(1, bb, True)
    lists = a[:, :, None].expand(nb, na, c)
    hit = in_b.gather(1, near_idx.gather(1, lists).view(nb, na * c)).view(nb, na, c)
    # argmax returns the first maximum: the first B token. (Not max(dim): its kernel splits even a few hundred
    # elements across threads, and on a loaded machine one call then waits ~16 ms for a descheduled thread.)
    first = hit.view(torch.uint8).argmax(dim=-1, keepdim=True)
    # Only the chosen entry of each list is read: one value per A token, not the whole list gathered.
    best = near_val.view(nb, frame * c).gather(1, (a * c + first.view(nb, na))).view(nb * na)
    missing = ~hit.gather(2, first).view(nb * na)
    if bool(missing.any()):
        flat = missing.nonzero().squeeze(1)  # positions in (B, |A|), row-major
        row = flat.div(na, rounding_mode="floor")
        token = a.reshape(-1).index_select(0, flat)
        # index_select over flat rows, not sim[row, token]: advanced indexing stalls like max(dim) above.
        full = sim.reshape(nb * frame, frame).index_select(0, row * frame + token)
        far = torch.where(in_b.index_select(0, row), full, -math.inf).amax(dim=-1)
        best = best.index_copy(0, flat, far)
    return best.view(nb, na)


def block(sim: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``sim[b, rows[b, i], cols[b, j]]`` as (B, |rows|, |cols|), by two gathers."""
    nb, frame = sim.shape[0], sim.shape[1]
    picked = sim.gather(1, rows[:, :, None].expand(nb, rows.shape[1], frame))
    return picked.gather(2, cols[:, None, :].expand(nb, rows.shape[1], cols.shape[1]))


def neighbour_lists(sim: Tensor) -> Tuple[Tensor, Tensor]:
    """Each row's most similar tokens, (values, columns) descending: 16, or fewer (not under 8) where a round's
    lookups (B x |A| x list length, |A| about half the frame) would pass torch's parallel grain of 32768 elements.
    Those gathers are memory-bound and gain little from a second thread, but on a loaded machine each waits ~15 ms
    for one; a shorter list costs only a few more rows read in full."""
    nb, frame = sim.shape[0], sim.shape[1]
    length = min(NEIGHBOURS, max(MIN_NEIGHBOURS, 32768 // max(1, nb * ((frame + 1) // 2))), frame)
    return torch.topk(sim, length, dim=-1)


def remove_duplicates(features: Tensor, residual: Tensor, diverse: int) -> Tensor:
    """VisPruner's iterative matching over ``residual`` (B, R) token indices of ``features`` (B, N, D); returns
    (B, diverse) of them.

    ``sim`` holds the similarities of the tokens still in play (its "frame"); ``order`` is the current residual
    order as rows of ``sim``. When the residual shrinks to half the frame, the frame is compacted to it so that
    about half of every top list are B tokens again; small frames compare A x B directly.
    """
    b, r0 = residual.shape
    dev = features.device
    tokens = features.gather(1, residual[:, :, None].expand(b, r0, features.shape[-1]))
    sim = cosine_gram("vispruner_indices", tokens)  # (B, R0, R0): every pair a round can compare
    order = torch.arange(r0, device=dev).expand(b, r0)
    near = neighbour_lists(sim) if r0 > DIRECT_FRAME else None
    for r in vispruner_rounds(r0, diverse):
        count = order.shape[1]
        if count <= sim.shape[1] // 2:
            sim = block(sim, order, order)
            residual = residual.gather(1, order)
            order = torch.arange(count, device=dev).expand(b, count)
            near = neighbour_lists(sim) if count > DIRECT_FRAME else None
        a, bb = order[:, 0::2], order[:, 1::2]
        if near is None:
            best = block(sim, a, bb).amax(dim=-1)
        else:
            best = closest_in_b(sim, near, a, bb)
        survivors = a.gather(1, descending_order(best)[:, r:])  # empty when r >= |A|
        order = torch.cat([survivors, bb], dim=1)
    return residual.gather(1, order)


def vispruner_indices(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """VisPruner's ``k`` tokens of each row of ``features`` (B, N, D), ranked by ``cls_attention`` (B, N).

    See the module docstring for the rule. ``features`` float16/bfloat16/float32/float64 (similarities in
    float32, float64 for float64 input), ``cls_attention`` any float dtype, finite; ``1 <= k <= N``.
    Returns (B, k) int64, ascending.
    """
    k = check_scored_inputs("vispruner_indices", features, k, cls_attention)
    important = k // 2  # the authors' important_ratio = 0.5, int(k * 0.5)
    order = descending_order(cls_attention)
    kept, residual = order[:, :important], order[:, important:]
    if residual.shape[1] > k - important:
        residual = remove_duplicates(features, residual, k - important)
    return torch.cat([kept, residual], dim=1).sort(dim=1).values
