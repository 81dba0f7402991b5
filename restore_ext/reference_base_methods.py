"""Float64 references of the VisPruner and HoloV base selectors (docs/ops.md §3c, §3d), following the authors' loops
one step at a time; re-exported by :mod:`restore_ext.reference`, the executable contract."""
import math
from typing import NamedTuple

import torch
from torch import Tensor


def _descending(values: Tensor) -> list:
    """Positions of ``values`` (1-D) from highest to lowest; equal values keep their order (lower first)."""
    return torch.sort(values, descending=True, stable=True).indices.tolist()


class VisPrunerRef(NamedTuple):
    indices: Tensor  # (B, k) int64, ascending
    margin: Tensor  # (B,) float64: the smallest gap between two similarities whose order decided something


def vispruner_selection(features: Tensor, k: int, cls_attention: Tensor) -> VisPrunerRef:
    """VisPruner as the RESTORE authors' ``encode_images`` runs it, one row and one round at a time, in float64.

    Important tokens: the ``int(k * 0.5)`` highest ``cls_attention``. Residual tokens, in descending attention
    order, go through rounds of matching until ``k - int(k * 0.5)`` remain: A = even positions, B = odd
    positions, each A token's score is its highest cosine similarity to a B token (a fresh A x B matmul, as the
    authors do it), the ``min(8, excess)`` highest-scoring A tokens are dropped and the next order is the kept A
    tokens by descending score, then B (a round with fewer than ``min(8, excess)`` A tokens drops all of them).
    Two rules where the authors' code leaves it open: every sort is stable (equal values keep the lower position
    first; their argsort is unstable), and where their batch indexing raises (an odd residual count, or fewer A
    tokens than the round wants to drop) the kept tokens are those their slicing ``[:, r:]`` keeps. A zero
    feature has cosine 0 to everything (theirs gives NaN).

    ``margin`` is, over all rounds, the smallest nonzero gap between adjacent sorted scores whose order matters
    (the cut between dropped and kept, and the order of the kept), so tests can tell a well-separated input from
    one where float32 rounding may legitimately decide differently; exact ties (gap 0) follow the rule above.
    """
    b, n, _ = features.shape
    xd = features.double()
    norm = xd.norm(dim=-1, keepdim=True)
    unit = xd / torch.where(norm > 0, norm, torch.ones_like(norm))
    n_imp = int(k * 0.5)
    n_div = k - n_imp
    rows, margins = [], []
    for row in range(b):
        order = _descending(cls_attention[row].double())
        important, residual = order[:n_imp], order[n_imp:]
        margin = math.inf
        while len(residual) > n_div:
            r = min(8, len(residual) - n_div)
            a, bb = residual[0::2], residual[1::2]
            score = (unit[row, a] @ unit[row, bb].T).amax(dim=1)
            ranked = _descending(score)
            gaps = -score[ranked].diff()[r - 1 :]  # the cut after the r dropped, then the kept tokens' order
            if bool((gaps > 0).any()):
                margin = min(margin, float(gaps[gaps > 0].min()))
            residual = [a[i] for i in ranked[r:]] + bb
        rows.append(sorted(important + residual))
        margins.append(margin)
    return VisPrunerRef(
        torch.tensor(rows, dtype=torch.long, device=features.device).view(b, k),
        torch.tensor(margins, dtype=torch.float64),
    )


def vispruner_indices(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """The contract of :func:`restore_ext.vispruner.vispruner_indices`: VisPruner's k tokens, ascending."""
    return vispruner_selection(features, k, cls_attention).indices


class HoloVRef(NamedTuple):
    indices: Tensor  # (B, k) int64, ascending
    margin: Tensor  # (B,) float64: how close a crop weight came to changing a budget


def holov_selection(features: Tensor, k: int, cls_attention: Tensor) -> HoloVRef:
    """HoloV with index tracking and budget redistribution as the RESTORE authors' ``HoloV_with_Indices`` runs
    it, one row and one crop at a time, in float64.

    16 contiguous crops (the first ``N % 16`` one token longer, empty ones skipped); per crop of m >= 2 tokens
    ``f = x / (||x|| + 1e-6)``, ``S = f f^T`` with a zeroed diagonal, ``mu = S.sum(1) / (m - 1)``,
    ``var = ((S - mu)^2).sum(1) / (m - 1)``, token score ``1e3 a + 0.09 var mean|1e3 a| / (mean|var| + 1e-6)``,
    crop score its mean (a one-token crop: its attention). Budgets ``floor(w k)`` with
    ``w = score / (sum + 1e-6)``, the shortfall one each to the highest weights, then up to k passes of
    clamping to the crop size and giving one each to the highest-weight crops with room, at most the deficit.
    In each crop its budget of highest-attention tokens. Every ``topk`` here breaks ties towards the lower
    index (the authors' leaves them unspecified).

    ``margin``: the smallest distance of a ``w * k`` to an integer and the smallest nonzero gap between two
    weights, so tests can tell where float32 similarities could legitimately change a budget.
    """
    b, n, _ = features.shape
    base, extra = divmod(n, 16)
    crops, start = [], 0
    for p in range(16):
        size = base + (1 if p < extra else 0)
        if size > 0:
            crops.append(list(range(start, start + size)))
        start += size
    rows, margins = [], []
    for row in range(b):
        x, att = features[row].double(), cls_attention[row].double()
        scores = []
        for crop in crops:
            a = att[crop]
            m = len(crop)
            if m <= 1:
                scores.append(float(a.mean()))
                continue
            f = x[crop] / (x[crop].norm(dim=1, keepdim=True) + 1e-6)
            s = (f @ f.T) * (1 - torch.eye(m, dtype=torch.float64, device=x.device))
            mu = s.sum(dim=1) / (m - 1)
            var = ((s - mu[:, None]) ** 2).sum(dim=1) / (m - 1)
            a = a * 1e3
            var = var * (a.abs().mean() / (var.abs().mean() + 1e-6))
            scores.append(float((a + 0.09 * var).mean()))
        total = sum(scores)
        weights = [s / (total + 1e-6) for s in scores]
        sizes = [len(c) for c in crops]
        budget = [math.floor(w * k) for w in weights]
        by_weight = sorted(range(len(crops)), key=lambda i: (-weights[i], i))
        for i in by_weight[: max(0, k - sum(budget))]:
            budget[i] += 1
        for _ in range(k):
            budget = [min(u, s) for u, s in zip(budget, sizes)]
            deficit = k - sum(budget)
            room = [i for i in by_weight if budget[i] < sizes[i]]
            if deficit <= 0 or not room:
                break
            for i in room[:deficit]:
                budget[i] += 1
        kept = []
        for crop, u in zip(crops, budget):
            kept += [crop[i] for i in _descending(att[crop])[:u]]
        rows.append(sorted(kept))
        near_int = min(abs(w * k - round(w * k)) for w in weights)
        ws = sorted(weights)
        gaps = [hi - lo for lo, hi in zip(ws, ws[1:]) if hi > lo]
        margins.append(min([near_int] + gaps))
    return HoloVRef(
        torch.tensor(rows, dtype=torch.long, device=features.device).view(b, k),
        torch.tensor(margins, dtype=torch.float64),
    )


def holov_indices(features: Tensor, k: int, cls_attention: Tensor) -> Tensor:
    """The contract of :func:`restore_ext.holov.holov_indices`: HoloV's k tokens, ascending."""
    return holov_selection(features, k, cls_attention).indices


def holov_crop_variance(x: Tensor) -> Tensor:
    """The contract of ``torch.ops.restore.holov_crop_variance``: for crops ``x`` (B, C, m, D) of m >= 2 tokens,
    (B, C) float64, each crop's mean over its tokens of the variance of their cosine similarities, the step of
    :func:`holov_selection` that needs the m x m matrix: ``f = x / (||x|| + 1e-6)``, ``S = f f^T`` with a zeroed
    diagonal, ``mu = S.sum(1) / (m - 1)``, ``var = ((S - mu)^2).sum(1) / (m - 1)`` (over all m columns, the
    zeroed diagonal included, as the authors sum it), result ``var.mean()``. ``x`` must be finite.
    """
    f = x.double()
    f = f / (torch.linalg.vector_norm(f, dim=-1, keepdim=True) + 1e-6)
    m = x.shape[2]
    s = (f @ f.transpose(-1, -2)) * (1 - torch.eye(m, dtype=torch.float64, device=x.device))
    mu = s.sum(dim=-1, keepdim=True) / (m - 1)
    return ((s - mu) ** 2).sum(dim=-1).div(m - 1).mean(dim=-1)


def vispruner_matching(sim: Tensor, keep: int) -> Tensor:
    """The contract of ``torch.ops.restore.vispruner_matching``: VisPruner's duplicate-removal rounds run on given
    similarities ``sim`` (B, R, R), residual tokens in their initial order (rows 0 .. R-1), until ``keep`` remain.

    The rounds of :func:`vispruner_selection` with ``sim`` in place of the per-round matmul: A = even positions,
    B = odd positions, score = max over B of ``sim[a, b]``, the ``min(8, excess)`` highest-scoring A dropped (all
    of A if fewer), next order = kept A by descending score (ties: earlier position first), then B. Returns the
    ``keep`` surviving rows, (B, keep) int64 ascending. ``sim`` must be finite.
    """
    b, r0, _ = sim.shape
    s = sim.double()
    rows = []
    for row in range(b):
        residual = list(range(r0))
        while len(residual) > keep:
            r = min(8, len(residual) - keep)
            a, bb = residual[0::2], residual[1::2]
            ranked = _descending(s[row][a][:, bb].amax(dim=1))
            residual = [a[i] for i in ranked[r:]] + bb
        rows.append(sorted(residual))
    return torch.tensor(rows, dtype=torch.long, device=sim.device).view(b, keep)
