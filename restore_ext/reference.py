"""The executable form of docs/ops.md: float64 pure-PyTorch references of every op.

Plain, obviously-correct formulations (full N x N and Lq x Lk matrices) that the kernels are tested
against. Floating outputs stay float64 so tests can measure a kernel's error against exact math.
Each function has the name of the function it is the contract of. Not for production use. Imports only torch
and restore_ext's pure-PyTorch modules (the dense attention bias), never the compiled extension, so it also
checks a library built without the Python package (tests/test_cmake_build.py).
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .attention_bias import dense_attention_bias


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """docs/ops.md §1. Highest first, ties to the lower index, NaN below -inf; returned in ascending index order."""
    s = scores.double()
    nan = torch.isnan(s)
    s = torch.where(nan, torch.full_like(s, -math.inf), s)
    # Stable sorts compose: the last sort is the primary key (NaN last), the first the secondary (value
    # descending); stability keeps index order for full ties.
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(nan.gather(1, order).to(torch.uint8), dim=1, stable=True).indices)
    return order[:, :k].sort(dim=1).values


def divprune_order(x: Tensor, k: int):
    """DivPrune (Alvar et al., CVPR 2025) greedy max-min diversity selection, float64, for x (B, N, D).

    Cosine distance ``dist = 1 - cos(x_i, x_j)`` with ``x / max(||x||, 1e-12)``. The first pick is the token
    whose nearest *other* token is farthest (``argmax_i min_{j != i} dist[i, j]``; token 0 when N == 1);
    each next pick is the unchosen token farthest from the chosen set (``argmax_i min_{c chosen}
    dist[i, c]``). Ties go to the lower index. Returns (order (B, k) in pick order, margin (B,) float64: the
    smallest gap, over the k picks, between the winner's distance and the best other candidate's, inf when
    no pick had a rival) so tests can tell a well-separated input from one where rounding may flip a pick.
    """
    b, n, _ = x.shape
    xd = x.double()
    xn = xd / xd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    # Decisions compare dist - 1 = -sim: the same order and the same gaps as dist, without rounding 1 - sim,
    # which merges every similarity below ~1e-16 (tokens under the 1e-12 norm floor) into a false exact tie.
    dist = -(xn @ xn.transpose(-1, -2))
    orders, margins = [], []
    for row in range(b):
        d = dist[row]
        margin = math.inf

        def pick(values):
            nonlocal margin
            best = int(values.argmax())  # first maximum: ties to the lower index
            if values.numel() > 1:
                top2 = values.topk(2).values
                margin = min(margin, float(top2[0] - top2[1]))
            return best

        if n == 1:
            first = 0
        else:
            eye = torch.eye(n, dtype=torch.bool, device=x.device)
            first = pick(d.masked_fill(eye, math.inf).amin(1))
        chosen = [first]
        taken = torch.zeros(n, dtype=torch.bool, device=x.device)
        taken[first] = True
        mind = d[:, first].clone()
        for _ in range(k - 1):
            c = pick(mind.masked_fill(taken, -math.inf))
            chosen.append(c)
            taken[c] = True
            mind = torch.minimum(mind, d[:, c])
        orders.append(chosen)
        margins.append(margin)
    return (
        torch.tensor(orders, dtype=torch.long, device=x.device).view(b, k),
        torch.tensor(margins, dtype=torch.float64),
    )


def divprune_indices(x: Tensor, k: int) -> Tensor:
    """docs/ops.md §1b, the contract of ``divprune_indices``: DivPrune's k picks, in ascending index order."""
    return divprune_order(x, k)[0].sort(dim=1).values


def uniform_indices(n: int, k: int) -> Tensor:
    """docs/ops.md §3b, the "uniform" base selector: the centre of each of k equal bins of [0, n), (k,) int64.

    Computed in exact Python integers (no tensor arithmetic that could overflow or round)."""
    return torch.tensor([((2 * i + 1) * n) // (2 * k) for i in range(k)], dtype=torch.long)


def _f32(t: Tensor) -> Tensor:
    return t.float().double()


class AnchorMergeRef(NamedTuple):
    merged: Tensor
    size: Tensor
    assign: Tensor
    anchors: Tensor


def anchor_scores(x: Tensor, rule: str = "reference"):
    """docs/ops.md §2 steps 1-5 for x (B, N, D): returns (sim, density, nearest, score).

    Computed in float64; density, nearest and score are then rounded to float32 (the precision docs/ops.md
    asks for at least) before any decision, so that values equal in exact arithmetic (N = 2, mirrored tokens)
    compare equal on every device instead of being ordered by rounding noise.
    """
    if rule not in ("reference", "dpc"):
        raise ValueError(f'anchor_merge: rule must be "reference" or "dpc", got "{rule}"')
    xd = x.double()
    xn = xd / xd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = xn @ xn.transpose(-1, -2)
    density = _f32(sim.sum(-1))
    d_i, d_j = density[:, :, None], density[:, None, :]
    better = d_j < d_i if rule == "reference" else d_j > d_i
    masked = torch.where(better, sim, torch.full_like(sim, -math.inf)).amax(-1)
    nearest = _f32(torch.where(better.any(-1), masked, torch.zeros_like(masked)))
    score = _f32(density * (1 - nearest))
    return sim, density, nearest, score


def anchor_merge(x: Tensor, num_anchors: int, rule: str = "reference") -> AnchorMergeRef:
    """docs/ops.md §2: distinctive anchors, token -> most similar anchor, plain mean per slot."""
    b, n, d = x.shape
    sim, _, _, score = anchor_scores(x, rule)
    anchors = topk_indices(score, num_anchors)
    to_anchor = sim.gather(2, anchors[:, None, :].expand(b, n, num_anchors))
    # First maximum: ties to the lower slot. A NaN similarity (a token with a NaN or inf feature) never
    # wins, so one poisoned anchor does not capture every token; a row with no number at all gets slot 0.
    assign = torch.where(to_anchor.isnan(), -math.inf, to_anchor).argmax(-1)
    assign.scatter_(1, anchors, torch.arange(num_anchors, device=x.device).expand(b, num_anchors))
    size = torch.zeros(b, num_anchors, dtype=torch.long, device=x.device)
    size.scatter_add_(1, assign, torch.ones_like(assign))
    total = torch.zeros(b, num_anchors, d, dtype=torch.float64, device=x.device)
    total.scatter_add_(1, assign[:, :, None].expand(b, n, d), x.double())
    merged = total / size[:, :, None]
    return AnchorMergeRef(merged, size, assign, anchors)


class ReducedRef(NamedTuple):
    tokens: Tensor
    size: Tensor
    position: Tensor
    source: Tensor


def restore_reduce(features: Tensor, retained: Tensor, num_out: int, rule: str = "reference") -> ReducedRef:
    """docs/ops.md §3, one batch row at a time, in the most literal form."""
    b, n, d = features.shape
    outs = []
    for row in range(b):
        kept = retained[row].tolist()
        rest = [i for i in range(n) if i not in set(kept)]
        m = anchor_merge(features[row : row + 1, rest], num_out - len(kept), rule)
        items = [(i, features[row, i], 1, [i]) for i in kept]  # (position, token, size, members)
        for s in range(num_out - len(kept)):
            members = sorted(rest[t] for t in range(len(rest)) if m.assign[0, t] == s)
            items.append((members[(len(members) - 1) // 2], m.merged[0, s], len(members), members))
        items.sort(key=lambda it: it[0])
        source = torch.empty(n, dtype=torch.long)
        for slot, (_, _, _, members) in enumerate(items):
            source[members] = slot
        outs.append(
            (
                torch.stack([it[1] for it in items]),
                torch.tensor([it[2] for it in items]),
                torch.tensor([it[0] for it in items]),
                source,
            )
        )
    dev = features.device
    return ReducedRef(*(torch.stack([o[i] for o in outs]).to(dev) for i in range(4)))


def distance_bias_table(max_distance: int, inv_freq: Tensor) -> Tensor:
    """docs/ops.md §4: table[d] = log(2 - mean_i cos(d * inv_freq[i])), computed in float64, returned float32."""
    dist = torch.arange(max_distance, dtype=torch.float64)
    decay = torch.cos(dist[:, None] * inv_freq.double().cpu()[None, :]).mean(-1)
    return torch.log(2 - decay).float()


def calibrated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_size: Optional[Tensor] = None,
    q_pos: Optional[Tensor] = None,
    k_pos: Optional[Tensor] = None,
    table: Optional[Tensor] = None,
    causal: bool = True,
    scale: Optional[float] = None,
) -> Tensor:
    """docs/ops.md §5 with the full (B, H, Lq, Lk) logit matrix in float64 (the bias: dense_attention_bias); 1-D
    positions with a (T,) table, or multi-axis positions (B, L, S) with an (S, T) table of decay shares (§5b)."""
    h, dh, hkv = q.shape[2], q.shape[3], k.shape[2]
    scale = 1.0 / math.sqrt(dh) if scale is None else scale
    qd = q.double().transpose(1, 2)  # (B, H, Lq, Dh)
    kd = k.double().transpose(1, 2).repeat_interleave(h // hkv, dim=1)
    vd = v.double().transpose(1, 2).repeat_interleave(h // hkv, dim=1)
    logit = dense_attention_bias(log_size, q_pos, k_pos, table, causal, scores=scale * qd @ kd.transpose(-1, -2))
    row_max = logit.amax(-1, keepdim=True)
    seen = torch.isfinite(row_max)
    weight = torch.exp(logit - torch.where(seen, row_max, torch.zeros_like(row_max)))
    total = weight.sum(-1, keepdim=True)
    prob = torch.where(total > 0, weight / total.clamp_min(1e-300), torch.zeros_like(weight))
    return (prob @ vd).transpose(1, 2).contiguous()


def mrope_axis_of_freq(mrope_section, num_freqs: int, interleaved: bool) -> list:
    """docs/ops.md §4b's axis rule in plain integers: Qwen2.5-VL contiguous chunks (t then h then w), Qwen3-VL
    interleaved (j % 3 == 1 and j < 3*section[1] -> h, j % 3 == 2 and j < 3*section[2] -> w, else t)."""
    if not interleaved:
        return [axis for axis, count in enumerate(mrope_section) for _ in range(count)]
    axes = []
    for j in range(num_freqs):
        if j % 3 == 1 and j < 3 * mrope_section[1]:
            axes.append(1)
        elif j % 3 == 2 and j < 3 * mrope_section[2]:
            axes.append(2)
        else:
            axes.append(0)
    return axes


def rope_decay_tables(max_distance: int, inv_freq: Tensor, axis_of_freq) -> Tensor:
    """docs/ops.md §4b, term by term in float64: decay[s, d] = (1/F) * sum over the frequencies of axis s of
    cos(d * inv_freq[i]). Returned in float64 (the op rounds to float32)."""
    f = inv_freq.shape[0]
    freqs = [float(x) for x in inv_freq.double().cpu()]
    axes = [int(a) for a in axis_of_freq]
    out = torch.zeros(3, max_distance, dtype=torch.float64)
    for d in range(max_distance):
        for i in range(f):
            out[axes[i], d] += math.cos(d * freqs[i]) / f
    return out


# The base-method references live in their own module (long loops); the contract keeps one entry point.
from .reference_base_methods import (  # noqa: E402,F401
    HoloVRef,
    VisPrunerRef,
    holov_crop_variance,
    holov_indices,
    holov_selection,
    vispruner_indices,
    vispruner_matching,
    vispruner_selection,
)
