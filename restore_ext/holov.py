"""HoloV (Zou et al., NeurIPS 2025) as a batched base selector, as the RESTORE authors run it (docs/ops.md §3d).

``holov_indices(features, k, cls_attention)`` keeps, per row of ``features`` (B, N, D):

1. Crops: the N tokens in raster order cut into 16 contiguous runs, the first ``N % 16`` one token longer
   (``min(16, N)`` non-empty crops; not 2-D blocks, as in the authors' code).
2. Crop score: for a crop of m >= 2 tokens, with ``f = x / (||x|| + 1e-6)`` and S its m x m cosine matrix with
   the diagonal set to 0, each token's similarity mean ``mu = rowsum(S) / (m - 1)`` and variance
   ``var = sum_j (S_ij - mu_i)^2 / (m - 1)`` (the zeroed diagonal included, as the authors sum it); token score
   ``1e3 * a + 0.09 * var * mean|1e3 * a| / (mean|var| + 1e-6)`` for its attention a; the crop score is the
   mean token score. A one-token crop scores its attention.
3. Budgets: ``w = score / (sum(score) + 1e-6)``, ``floor(w * k)`` tokens each, the shortfall one each to the
   highest-weight crops, then, while some crop is given more than it holds, the excess is clamped and handed
   out one per round to the highest-weight crops with room.
4. In each crop, its budget of highest-attention tokens.

Every ranking breaks ties towards the lower index (the authors' ``topk`` leaves ties unspecified). Returns
(B, k) int64, ascending. The float64 form that follows the authors' loops is
:func:`restore_ext.reference.holov_indices`.

On the CPU the whole selection is one call of the compiled op ``restore::holov_indices`` (crops in parallel, each
crop's Gram one AVX-512 or BLAS call reduced in cache; for N >= 1265 on CPUs with AMX-BF16 in bfloat16 with a proven
interval for V, and exactly for the rows that interval cannot decide; then per row the scores, the authors' budget loop and the
in-crop choice; docs/ops.md §3d). Elsewhere, :func:`holov_indices_torch`: crops of one size are one view (B,
crops, m, D), so the crop scores are one batched matmul and float64 reductions per size (at most two); budgets
(the authors' redistribution loop in closed form) and the in-crop choice are sorts over (B, 16) and (B, 16, m).
No host sync on CUDA.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from . import ops
from ._scored_inputs import check_scored_inputs, compute_dtype, cosine_gram

NUM_CROPS = 16
ALPHA = 0.09  # weight of the similarity variance in a token's score
ATTENTION_SCALE = 1e3
EPS = 1e-6


def crop_groups(n: int) -> List[Tuple[int, int, int]]:
    """(first token, crop count, crop length) of each run of equal-length crops, in token order."""
    base, extra = divmod(n, NUM_CROPS)
    groups = [(0, extra, base + 1)] if extra else []
    if base:
        groups.append((extra * (base + 1), NUM_CROPS - extra, base))
    return groups


def crop_variance(x: Tensor) -> Tensor:
    """Each crop's mean similarity variance V, (B, C) float64, for crops ``x`` (B, C, m, D) of m >= 2 tokens: the
    compiled op on the CPU (each crop's m x m matrix reduced while in cache), torch ops elsewhere."""
    x = x.to(compute_dtype(x))
    if x.device.type != "cpu":
        return crop_variance_torch(x)
    try:
        return ops.holov_crop_variance(x)
    except RuntimeError as e:  # the op's only value check; say it as every other entry point of holov does
        if "must be finite" not in str(e):
            raise
    raise ValueError("holov_indices: features must be finite, got NaN or inf")


def crop_variance_torch(x: Tensor) -> Tensor:
    """:func:`crop_variance` as torch ops on any device, without a host sync on CUDA."""
    m = x.shape[2]
    sim = cosine_gram("holov_indices", x, EPS)  # f = x / (|x| + 1e-6), f f^T
    sim.diagonal(dim1=-2, dim2=-1).zero_()
    # Row sums and sums of squares accumulated in float64 straight from the Gram matrix (no float64 copy of it,
    # no (S - mu) matrix): sum_j (S_ij - mu)^2 = sum_j S_ij^2 - 2 mu sum_j S_ij + m mu^2 over all m columns (the
    # zeroed diagonal too, as the authors sum it).
    total = sim.sum(dim=-1, dtype=torch.float64)
    squares = torch.linalg.vector_norm(sim, dim=-1, dtype=torch.float64).square()
    mu = total / (m - 1)
    var = (squares - 2 * mu * total + m * mu.square()).clamp_min(0) / (m - 1)
    return var.mean(dim=-1)


def crop_scores(features: Tensor, attention: Tensor) -> Tensor:
    """HoloV's score of every crop, (B, C) float64."""
    b, n, d = features.shape
    scores = []
    for start, count, m in crop_groups(n):
        att = attention[:, start : start + count * m].reshape(b, count, m).double()
        if m == 1:
            scores.append(att[..., 0])
            continue
        v = crop_variance(features[:, start : start + count * m].reshape(b, count, m, d))
        # With a >= 0 and var >= 0, the mean of the token scores 1e3 a + 0.09 var mean|1e3 a| / (mean|var| + 1e-6)
        # is 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)), V the crop's mean variance.
        scores.append(ATTENTION_SCALE * att.mean(dim=-1) * (1 + ALPHA * v / (v + EPS)))
    return torch.cat(scores, dim=1)


def descending_rank(values: Tensor) -> Tensor:
    """Each entry's place when its row is sorted from highest to lowest, equal values in index order."""
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(values.shape[-1], device=values.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def crop_budgets(scores: Tensor, crop_sizes: List[int], k: int) -> Tensor:
    """Tokens per crop, (B, C) int64 summing to k with none above its crop's size, as the authors' loop hands
    them out, in closed form (no loop, no host sync).

    Their loop clamps the budgets to the crop sizes, then, while tokens are missing, gives one more to each of
    the highest-weight crops with room, at most as many as are missing. As long as at least as many tokens are
    missing as crops have room, every crop with room gains one: after t such passes the budgets are
    ``min(c + t, size)`` (c: the first clamped budgets), so t is the largest with ``sum(min(c + t, size)) <= k``;
    the last pass gives the remaining few to the highest-weight crops with room.
    """
    sizes = torch.tensor(crop_sizes, device=scores.device)
    weights = scores / (scores.sum(dim=-1, keepdim=True) + EPS)
    budget = (weights * k).floor().long()
    short = k - budget.sum(dim=-1, keepdim=True)
    budget = torch.minimum(budget + (descending_rank(weights) < short).long(), sizes)
    passes = torch.arange(max(crop_sizes) + 1, device=sizes.device)
    filled = torch.minimum(budget[..., None] + passes, sizes[:, None]).sum(dim=1)  # (B, passes): nondecreasing
    t = (filled <= k).sum(dim=-1, keepdim=True) - 1
    budget = torch.minimum(budget + t, sizes)
    room = budget < sizes
    missing = k - budget.sum(dim=-1, keepdim=True)
    return budget + (descending_rank(weights.masked_fill(~room, -torch.inf)) < missing).long()


def holov_indices(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """HoloV's ``k`` tokens of each row of ``features`` (B, N, D), given ``cls_attention`` (B, N) >= 0.

    See the module docstring for the rule. ``features`` float16/bfloat16/float32/float64 (similarities in
    float32, float64 for float64 input; scores and budgets in float64), ``cls_attention`` finite and
    nonnegative; ``1 <= k <= N``. Returns (B, k) int64, ascending. On the CPU one call of the compiled op
    ``restore::holov_indices``; elsewhere :func:`holov_indices_torch`.
    """
    on_cpu = features.device.type == "cpu" and not features.is_meta
    # On the CPU the op checks the attention values in the pass that reads them (two fewer passes and syncs).
    k = check_scored_inputs("holov_indices", features, k, cls_attention, nonnegative=True, values=not on_cpu)
    if features.is_meta:
        return features.new_empty((features.shape[0], k), dtype=torch.long)
    if not on_cpu:
        return holov_indices_torch(features, k, cls_attention)
    try:
        return ops.holov_indices(features.to(compute_dtype(features)), k, cls_attention)
    except RuntimeError as e:  # the op's value checks, said as every Python entry point says them
        for words, message in OP_VALUE_ERRORS:
            if words in str(e):
                raise ValueError(f"holov_indices: {message}") from None
        raise


# What the op's value checks say, and how the Python function words them (restore_ext._scored_inputs).
OP_VALUE_ERRORS = (
    ("cls_attention must be finite", "scores must be finite, got NaN or inf"),
    ("cls_attention must be >= 0", "scores must be >= 0 (attention weights), got a negative score"),
    ("features must be finite", "features must be finite, got NaN or inf"),
)


def holov_indices_torch(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """:func:`holov_indices` as torch ops on any device (checked inputs), without a host sync on CUDA."""
    b, n, _ = features.shape
    dev = features.device
    groups = crop_groups(n)
    longest = groups[0][2]
    crop_sizes = [m for _, count, m in groups for _ in range(count)]
    sizes = torch.tensor(crop_sizes, device=dev)
    budget = crop_budgets(crop_scores(features, cls_attention), crop_sizes, k)
    # (C, longest) token index of each crop slot; a shorter crop's last slot is padding and never chosen.
    starts = torch.tensor([s + i * m for s, count, m in groups for i in range(count)], device=dev)
    slot = torch.arange(longest, device=dev)
    token = (starts[:, None] + slot).clamp_max(n - 1)
    # index_select / gather rather than advanced indexing, which on a loaded machine stalls ~15 ms a call
    att = cls_attention.index_select(1, token.view(-1)).view(b, *token.shape)
    att = att.masked_fill(slot >= sizes[:, None], -torch.inf)
    chosen = descending_rank(att) < budget[..., None]  # (B, C, longest)
    # Crop slots are laid out in token order, so the first k chosen slots in that order are the k tokens, ascending.
    first = torch.sort(chosen.view(b, chosen.shape[1] * longest).to(torch.uint8), dim=1, descending=True, stable=True)
    first = first.indices[:, :k]
    return token.view(-1).index_select(0, first.reshape(-1)).view(b, k)
