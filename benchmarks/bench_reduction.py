"""RESTORE's reduction ops against the formulations they replace, side by side.

    run by benchmarks/run.py (make bench)

- anchor_merge (N -> out/2 anchors, the merge half of a budget) vs the authors' formulation in PyTorch (normalise, N x N matmul, sum, masked max, topk,
                       argmax, scatter mean), and vs ToMe (bipartite soft matching + size-weighted merge,
                       repeated until the same number of merged tokens remains);
- restore_reduce     vs the same composite built on the authors' anchor merge;
- divprune_indices   vs the authors' loop (a full distance matrix, then per step torch ops over the picks);
- vispruner_indices, holov_indices vs the RESTORE authors' loops (benchmarks/authors_selectors.py), N <= 2880;
                       holov_indices also vs `crop_gram_floor`, its crops' float32 Gram matmuls alone (the work of
                       every HoloV that computes them in float32) and vs `gram_exact`, our op with gram="exact"
                       (ours is gram="auto": bfloat16 Gram matrices with proven bounds on a CPU with AMX-BF16);
                       neither is a peer, they say where the time goes;
- topk_indices       vs torch.topk + sort.
"""
import math

import torch
import torch.nn.functional as F

import restore_ext
from authors_selectors import authors_holov, authors_vispruner
from common import Case
from restore_ext._scored_inputs import check_scored_inputs
from restore_ext.holov import crop_groups, holov_indices
from restore_ext.vispruner import vispruner_indices


# ---- baselines, written from the published algorithms --------------------------------------------------------


def authors_anchor_merge(x, k):
    xn = F.normalize(x.float(), dim=-1)
    sim = xn @ xn.transpose(1, 2)
    density = sim.sum(-1)
    better = density[:, None, :] < density[:, :, None]
    nearest = sim.masked_fill(~better, -math.inf).amax(-1)
    nearest = torch.where(better.any(-1), nearest, torch.zeros_like(nearest))
    score = density * (1 - nearest)
    anchors = score.topk(k, dim=1).indices.sort(dim=1).values
    b, n, d = x.shape
    assign = sim.gather(2, anchors[:, None, :].expand(b, n, k)).argmax(-1)
    assign.scatter_(1, anchors, torch.arange(k, device=x.device).expand(b, k))
    merged = torch.zeros(b, k, d, device=x.device, dtype=torch.float32)
    merged.scatter_reduce_(1, assign[:, :, None].expand(b, n, d), x.float(), "mean", include_self=False)
    size = torch.zeros(b, k, dtype=torch.long, device=x.device).scatter_add_(1, assign, torch.ones_like(assign))
    return merged.to(x.dtype), size, assign, anchors


def tome_merge(x, num_out):
    """ToMe (Bolya et al., ICLR 2023): alternate tokens into sets A and B, match each A token to its most similar
    B token by cosine similarity, merge the r best-matched A tokens into their B partners with a size-weighted
    average. One round removes at most |A| tokens, so rounds repeat until num_out tokens remain."""
    b, n, d = x.shape
    size = torch.ones(b, n, 1, device=x.device, dtype=torch.float32)
    x = x.float()
    while x.shape[1] > num_out:
        n = x.shape[1]
        r = min(n - num_out, (n + 1) // 2, n // 2)
        metric = F.normalize(x, dim=-1)
        a, bb = metric[:, ::2], metric[:, 1::2]
        scores = a @ bb.transpose(1, 2)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
        dst_idx = node_idx[..., None].gather(1, src_idx)
        xs, ss = x * size, size
        xa, xb, sa, sb = xs[:, ::2], xs[:, 1::2], ss[:, ::2], ss[:, 1::2]
        unm = xa.gather(1, unm_idx.expand(-1, -1, d))
        xb = xb.scatter_add(1, dst_idx.expand(-1, -1, d), xa.gather(1, src_idx.expand(-1, -1, d)))
        sb = sb.scatter_add(1, dst_idx, sa.gather(1, src_idx))
        size = torch.cat([sa.gather(1, unm_idx), sb], dim=1)
        x = torch.cat([unm, xb], dim=1) / size
    return x, size


def authors_divprune(x, k):
    """DivPrune's released selection loop, per batch row: a full cosine distance matrix, then each step the
    min distance of every token to the i picks so far (recomputed over the picks), argmax."""
    out = []
    for row in x:
        xn = F.normalize(row.float(), dim=-1)
        dist = 1 - xn @ xn.T
        picks = torch.empty(k, dtype=torch.long, device=x.device)
        for i in range(k):
            if i == 0:
                scores = torch.topk(dist, 2, dim=0, largest=False).values[1]
            else:
                scores = dist.index_select(0, picks[:i]).min(dim=0).values
            picks[i] = scores.argmax()
        out.append(picks.sort().values)
    return torch.stack(out)


def crop_gram_floor(x):
    """The (B, crops, m, m) Gram matmuls of HoloV's crops, nothing else: each crop score needs all of them."""
    b, n, d = x.shape
    crops = [x[:, s : s + c * m].reshape(b, c, m, d) for s, c, m in crop_groups(n)]
    return [v @ v.transpose(-1, -2) for v in crops]


def holov_gram_exact(x, k, att):
    """holov_indices on the CPU with every crop's Gram matrix in float32 (the op's gram="exact"), its inputs
    checked as holov_indices checks them."""
    k = check_scored_inputs("holov_indices", x, k, att, nonnegative=True, values=False)
    return restore_ext.ops.holov_indices(x, k, att, "exact")


def authors_restore_reduce(features, retained, num_out):
    """restore_reduce's composite (docs/ops.md §3) with the authors' N x N anchor merge in place of the op."""
    b, n, d = features.shape
    r = retained.shape[1]
    is_rest = torch.ones(b, n, dtype=torch.bool, device=features.device)
    is_rest[torch.arange(b, device=features.device)[:, None], retained] = False
    rest = is_rest.nonzero()[:, 1].view(b, n - r)
    merged, size, assign, _ = authors_anchor_merge(features.gather(1, rest[:, :, None].expand(b, n - r, d)), num_out - r)
    member_order = (assign * n + rest).sort(dim=1).values % n
    pos = member_order.gather(1, size.cumsum(1) - size + (size - 1) // 2)
    position, order = torch.cat([retained, pos], 1).sort(dim=1)
    tokens = torch.cat([features.gather(1, retained[:, :, None].expand(b, r, d)), merged], 1)
    return tokens.gather(1, order[:, :, None].expand(b, num_out, d)), position


# ---- cases for benchmarks/run.py ------------------------------------------------------------------------------


class LazyInputs:
    """A shape's inputs, made on first use: run.py --only / --shape then allocates only the cases it runs (the full
    list's inputs together are several GiB). After the first use each is a plain attribute, so timing is unaffected."""

    def __init__(self, b, n, d, r, dtype, device):
        self._spec = (b, n, d, r, dtype, device)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        b, n, d, r, dtype, device = self._spec
        self.x = torch.randn(b, n, d, device=device, dtype=dtype)
        self.scores = torch.randn(b, n, device=device)
        self.retained = restore_ext.select(self.x, r, "uniform")
        self.att = torch.softmax(self.scores, dim=-1)
        return getattr(self, name)


def cases(quick, device):
    if quick:  # about a minute on 2 CPU cores
        shapes = [(1, 576, 1024, 64), (8, 576, 1024, 64), (1, 2880, 1024, 192)]
    else:
        shapes = [(b, n, d, o) for b in (1, 8) for n in (576, 2880, 16384) for d in (1024, 4096) for o in (64, 192)]
    out_cases = []
    for b, n, d, out in shapes:
        dtype = torch.float16 if device == "cuda" else torch.float32
        r = out // 2
        t = LazyInputs(b, n, d, r, dtype, device)
        shape = f"B{b} N{n} D{d} out{out}"
        dt = str(dtype).split(".")[-1]
        big = b * n * n * 4 / 2**30 > (4 if device == "cpu" else 40)  # N x N baselines that would not fit
        slow_loop = device == "cpu" and (n > 2880 or b * n > 4608)

        def peers(**named):
            return {k: v for k, v in named.items() if v is not None}

        out_cases += [
            Case("anchor_merge", shape, dt, device, ours=lambda t=t, k=out - r: restore_ext.anchor_merge(t.x, k),
                 peers=peers(authors=None if big else (lambda t=t, k=out - r: authors_anchor_merge(t.x, k)),
                             ToMe=lambda t=t, k=out - r: tome_merge(t.x, k))),
            Case("restore_reduce", shape, dt, device,
                 ours=lambda t=t, o=out: restore_ext.restore_reduce(t.x, t.retained, o),
                 peers=peers(authors=None if big else (lambda t=t, o=out: authors_restore_reduce(t.x, t.retained, o)))),
            Case("reduce(divprune)", shape, dt, device, ours=lambda t=t, o=out: restore_ext.reduce(t.x, o),
                 peers=peers(authors=None if big or slow_loop else (
                     lambda t=t, r=r, o=out: authors_restore_reduce(t.x, authors_divprune(t.x, r), o)))),
            Case("divprune_indices", shape, dt, device, ours=lambda t=t, r=r: restore_ext.divprune_indices(t.x, r),
                 peers=peers(authors_loop=None if big or slow_loop else (lambda t=t, r=r: authors_divprune(t.x, r)))),
        ]
        if n <= 2880:  # VisPruner keeps R x R similarities per row, and the authors' VisPruner loop grows as N^3
            out_cases += [
                Case("vispruner_indices", f"B{b} N{n} D{d} k{r}", dt, device,
                     ours=lambda t=t, r=r: vispruner_indices(t.x, r, t.att),
                     peers=peers(authors_loop=None if slow_loop else (
                         lambda t=t, r=r: authors_vispruner(t.x, r, t.att)))),
                Case("holov_indices", f"B{b} N{n} D{d} k{r}", dt, device,
                     ours=lambda t=t, r=r: holov_indices(t.x, r, t.att),
                     peers={"authors_loop": lambda t=t, r=r: authors_holov(t.x, r, t.att),
                            "crop_gram_floor": lambda t=t: crop_gram_floor(t.x),
                            **({"gram_exact": lambda t=t, r=r: holov_gram_exact(t.x, r, t.att)}
                               if device == "cpu" else {})}),
            ]
        out_cases += [
            Case("topk_indices", f"B{b} N{n} k{r}", "float32", device,
                 ours=lambda t=t, r=r: restore_ext.topk_indices(t.scores, r),
                 peers={"torch.topk+sort": lambda t=t, r=r: t.scores.topk(r, dim=1).indices.sort(dim=1).values}),
        ]
    return out_cases
