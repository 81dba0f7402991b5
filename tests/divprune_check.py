"""Checks a DivPrune result against the float64 greedy, tolerating only rounding-level near-ties."""
import math

import torch

from restore_ext import reference


def assert_divprune_matches(got, x, k, tol=1e-5):
    """`got` (B, k) must be what the float64 greedy picks, except that where the best and another candidate are
    within `tol` in distance (a float32 kernel may rank them either way), any of them may be picked: the replay
    then follows the kernel's choice. Exact ties (equal in float64) must go to the lower index."""
    got = got.cpu()
    assert got.shape == (x.shape[0], k) and got.dtype == torch.long
    assert torch.equal(got, got.sort(dim=1).values), "indices must be ascending"
    b, n, _ = x.shape
    xd = x.detach().cpu().double()
    xn = xd / xd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = 1 - xn @ xn.transpose(-1, -2)
    for row in range(b):
        want = set(got[row].tolist())
        assert len(want) == k, f"row {row}: repeated indices {got[row].tolist()}"
        d = dist[row]

        def pick(values, step):
            best = float(values.max())
            near = [i for i in torch.nonzero(values >= best - tol).flatten().tolist()]
            exact = [i for i in near if float(values[i]) == best]
            if exact[0] in want:  # the exact winner, ties to the lower index
                return exact[0]
            in_set = [i for i in near if i in want and float(values[i]) < best]
            assert in_set, (
                f"row {row} step {step}: the greedy picks {exact[0]} (distance {best:.9f}); no token of the result "
                f"is within {tol} of it"
            )
            return max(in_set, key=lambda i: float(values[i]))

        if n == 1:
            first = 0
        else:
            first = pick(d.masked_fill(torch.eye(n, dtype=torch.bool), math.inf).amin(1), 0)
        chosen, taken = [first], torch.zeros(n, dtype=torch.bool)
        taken[first] = True
        mind = d[:, first].clone()
        for step in range(1, k):
            c = pick(mind.masked_fill(taken, -math.inf), step)
            chosen.append(c)
            taken[c] = True
            mind = torch.minimum(mind, d[:, c])
        assert sorted(chosen) == sorted(want), f"row {row}: replay {sorted(chosen)} != result {sorted(want)}"


def exact_or_close(got, x, k, tol=1e-5):
    """Exact equality with the reference where its decisions are separated by more than 10 x tol."""
    order, margin = reference.divprune_order(x.cpu(), k)
    if float(margin.min()) > 10 * tol:
        assert torch.equal(got.cpu(), order.sort(dim=1).values)
    else:
        assert_divprune_matches(got, x, k, tol)
