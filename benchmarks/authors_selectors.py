"""The authors' VisPruner and HoloV selections as released with RESTORE, as benchmark peers.

Rewritten from the published algorithms (cvlab-yonsei/RESTORE, tokenreduction/tore/vispruner/llava_arch_restore.py
``encode_images`` and tokenreduction/tore/holov/utils.py ``HoloV_with_Indices``) with the same torch operations and
loop structure, so the timings measure their formulation: VisPruner recomputes an (R/2) x (R/2) similarity matmul
every round; HoloV runs a Python loop over rows and crops. Only the returned indices are kept (sorted ascending, as
restore_ext returns them); nothing here is part of the library.
"""
import torch


def authors_vispruner(features, k, cls_attention):
    b = features.shape[0]
    n_imp = int(k * 0.5)
    n_div = k - n_imp
    order = cls_attention.argsort(dim=-1, descending=True)
    important, residual = order[:, :n_imp], order[:, n_imp:]
    unit = features / features.norm(dim=-1, keepdim=True)
    rows = torch.arange(b, device=features.device)[:, None]
    while n_div > 0:
        r_len = residual.shape[1]
        r = min(8, r_len - n_div)
        if r <= 0:
            break
        tokens = unit[rows.expand(-1, r_len), residual]
        a, bb = tokens[:, ::2], tokens[:, 1::2]
        best = (a @ bb.transpose(-1, -2)).max(dim=-1).values
        keep = best.argsort(dim=-1, descending=True)[:, r:]
        residual = torch.cat([residual[:, ::2].gather(1, keep), residual[:, 1::2]], dim=-1)
    return torch.cat([important, residual], dim=-1).sort(dim=-1).values


def authors_holov(features, k, cls_attention, num_crops=16, eps=1e-6):
    b, n, _ = features.shape
    device = features.device
    base, extra = divmod(n, num_crops)
    out = []
    for row in range(b):
        x, att = features[row], cls_attention[row]
        crops, start = [], 0
        for p in range(num_crops):
            size = base + (1 if p < extra else 0)
            if size > 0:
                crops.append((start, start + size))
            start += size
        scores = []
        for lo, hi in crops:
            m, a = hi - lo, att[lo:hi]
            if m <= 1:
                scores.append(a.mean())
                continue
            f = x[lo:hi] / (x[lo:hi].norm(dim=1, keepdim=True) + eps)
            s = (f @ f.T) * (1 - torch.eye(m, device=device))
            mu = s.sum(dim=1) / (m - 1)
            var = ((s - mu[:, None]) ** 2).sum(dim=1) / (m - 1)
            a_scaled = a * 1e3
            var_scaled = var * (a_scaled.abs().mean() / (var.abs().mean() + eps))
            scores.append((a_scaled + 0.09 * var_scaled).mean())
        scores = torch.stack(scores)
        sizes = torch.tensor([hi - lo for lo, hi in crops], device=device)
        weights = scores / (scores.sum() + eps)
        alloc = (weights * k).floor().long()
        left = k - alloc.sum()
        if left > 0:
            for i in torch.topk(weights, k=min(left.item(), len(weights))).indices[:left]:
                alloc[i] += 1
        for _ in range(k):
            alloc = torch.min(alloc, sizes)
            deficit = k - alloc.sum().item()
            if deficit <= 0:
                break
            room = alloc < sizes
            if room.sum() == 0:
                break
            w = weights.clone()
            w[~room] = -float("inf")
            alloc[torch.topk(w, k=min(deficit, room.sum().item())).indices] += 1
        kept = []
        for (lo, hi), a_n in zip(crops, alloc):
            a_n = a_n.item()
            if a_n == hi - lo:
                kept.append(torch.arange(lo, hi, device=device))
            elif a_n > 0:
                kept.append(lo + torch.topk(att[lo:hi], k=a_n).indices)
        out.append(torch.cat(kept).sort().values)
    return torch.stack(out)
