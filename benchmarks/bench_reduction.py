"""RESTORE's reduction ops against the formulations they replace, side by side.

    python benchmarks/bench_reduction.py [--quick] [--device cpu|cuda]

- anchor_merge       vs the authors' formulation in PyTorch (normalise, N x N matmul, sum, masked max, topk,
                       argmax, scatter mean), and vs ToMe (bipartite soft matching + size-weighted merge,
                       repeated until the same number of merged tokens remains);
- restore_reduce     vs the same composite built on the authors' anchor merge;
- divprune_indices   vs the authors' loop (a full distance matrix, then per step torch ops over the picks);
- topk_indices       vs torch.topk + sort.
Median of torch.utils.benchmark.Timer.blocked_autorange; "x" = baseline / ours (> 1: ours is faster).
"""
import argparse
import math
import os
import platform
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import restore_ext  # noqa: E402


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


def authors_restore_reduce(features, retained, num_out):
    """restore_reduce's composite (SPEC §3) with the authors' N x N anchor merge in place of the op."""
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


# ---- timing ---------------------------------------------------------------------------------------------------


def median_ms(fn, device, min_run_time):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median * 1e3


def cases(device, quick):
    if quick:  # about a minute on 2 CPU cores
        shapes = [(1, 576, 1024, 64), (1, 576, 1024, 192), (8, 576, 1024, 64), (1, 2880, 1024, 192)]
    else:
        shapes = [(b, n, d, o) for b in (1, 8) for n in (576, 2880, 16384) for d in (1024, 4096) for o in (64, 192)]
    for b, n, d, out in shapes:
        x = torch.randn(b, n, d, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        r = out // 2
        retained = restore_ext.select(x, r, "uniform")
        shape = f"B={b} N={n} D={d} out={out}"
        nxn_gib = b * n * n * 4 / 2**30
        big = nxn_gib > (4 if device == "cpu" else 40)  # skip the N x N baselines where they would not fit
        yield "anchor_merge", shape, (lambda: restore_ext.anchor_merge(x, out)), {
            "authors": None if big else (lambda: authors_anchor_merge(x, out)),
            "ToMe": lambda: tome_merge(x, out),
        }
        yield "restore_reduce", shape, (lambda: restore_ext.restore_reduce(x, retained, out)), {
            "authors": None if big else (lambda: authors_restore_reduce(x, retained, out)),
        }
        slow_loop = device == "cpu" and (n > 2880 or b * n > 4608)
        yield "divprune_indices", shape, (lambda: restore_ext.divprune_indices(x, r)), {
            "authors loop": None if big or slow_loop else (lambda: authors_divprune(x, r)),
        }
        scores = torch.randn(b, n, device=device)
        yield "topk_indices", shape, (lambda: restore_ext.topk_indices(scores, r)), {
            "torch.topk+sort": lambda: scores.topk(r, dim=1).indices.sort(dim=1).values,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a CPU-sized subset (about a minute on 2 cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    min_run = 0.1 if args.quick else 0.5
    dev = torch.cuda.get_device_name() if args.device == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# restore_ext reduction benchmarks on {args.device} ({dev}), torch {torch.__version__}")
    print(f"| {'op':<17} | {'shape':<27} | {'ours ms':>9} | {'baseline':<16} | {'base ms':>9} | {'x':>6} |")
    print(f"|{'-' * 19}|{'-' * 29}|{'-' * 11}|{'-' * 18}|{'-' * 11}|{'-' * 8}|")
    for op, shape, ours, peers in cases(args.device, args.quick):
        t = median_ms(ours, args.device, min_run)
        for name, fn in peers.items():
            if fn is None:
                print(f"| {op:<17} | {shape:<27} | {t:9.3f} | {name:<16} | {'skipped':>9} | {'':>6} |")
                continue
            tp = median_ms(fn, args.device, min_run)
            print(f"| {op:<17} | {shape:<27} | {t:9.3f} | {name:<16} | {tp:9.3f} | {tp / t:6.2f} |", flush=True)


if __name__ == "__main__":
    main()
