"""Shared test helpers: devices and dtypes, a crash-proof subprocess runner, FlashAttention's tolerance rule and
its eager yardstick, and the decision-margin checks that let discrete results (anchors, DivPrune picks) be
compared exactly with the float64 reference. Test modules import these from here, never from each other."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import restore_ext  # noqa: F401  (registers torch.ops.restore.*)
from restore_ext import reference
from restore_ext.attention_bias import dense_attention_bias

# tests/vllm/ needs vLLM's own virtual environment (`make test-vllm` sets RESTORE_TEST_VLLM=1); the main run never
# collects it, so it never imports vllm.
collect_ignore = [] if os.environ.get("RESTORE_TEST_VLLM") == "1" else ["vllm"]

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every op test runs on CPU and, when a GPU is present, on CUDA; CUDA params are skipped with a reason
# otherwise, so a CPU-only run says how many CUDA checks it did not do.
CUDA_ONLY = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_ONLY)]


def fa_tolerance_check(out, ref64, eager_lowp, floor=1e-6, factor=2.0):
    """FlashAttention's rule: a kernel's error against the float64 reference is at most `factor` times the
    error of the same math done by eager PyTorch in the kernel's precision (plus a tiny floor for exact
    cases). Float32 kernels are held to the float32 eager error the same way."""
    ref64 = ref64.double()
    err = (out.double() - ref64).abs().max().item() if out.numel() else 0.0
    eager_err = (eager_lowp.double() - ref64).abs().max().item() if out.numel() else 0.0
    assert err <= factor * eager_err + floor, (
        f"kernel error {err:.3e} exceeds {factor} x eager error {eager_err:.3e} + {floor:.0e}"
    )


def run_isolated(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter, so a crash (segfault, abort) fails the test instead of pytest."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def eager_same_precision(q, k, v, log_size, q_pos, k_pos, table, causal, scale=None):
    """The same math as the reference, done by eager PyTorch in the inputs' dtype (the FlashAttention tests'
    yardstick for how much error that precision forces)."""
    h, dh, hkv = q.shape[2], q.shape[3], k.shape[2]
    scale = 1 / math.sqrt(dh) if scale is None else scale
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    kt, vt = kt.repeat_interleave(h // hkv, 1), vt.repeat_interleave(h // hkv, 1)
    logit = dense_attention_bias(log_size, q_pos, k_pos, table, causal, scores=(qt @ kt.transpose(-1, -2)) * scale)
    prob = torch.softmax(logit, dim=-1).nan_to_num(0.0)
    return (prob @ vt).transpose(1, 2)


# ---- anchor_merge: when float32 kernels must agree with float64 on every discrete choice -------------------


def _sorted_gaps(v):
    s = v.sort(dim=-1).values
    return (s[..., 1:] - s[..., :-1]).abs()


def decisions_well_separated(x, k, rule, rel_margin=2e-6, sim_margin=1e-5):
    """True when no better-relation, anchor choice or assignment is within float32 rounding of flipping
    (relative `rel_margin` of the density scale, absolute `sim_margin` for similarities). Exact ties
    (gap 0) are fine: both sides resolve them by index."""
    sim, density, _, score = reference.anchor_scores(x, rule)
    n = x.shape[1]
    scale = density.abs().amax(-1, keepdim=True).clamp_min(1)
    d_gaps = _sorted_gaps(density) / scale
    if n > 1 and ((d_gaps > 0) & (d_gaps < rel_margin)).any():
        return False
    if k < n:
        top = score.sort(dim=-1, descending=True).values
        gap = (top[:, k - 1] - top[:, k]).abs() / scale[:, 0]
        if ((gap > 0) & (gap < rel_margin)).any():
            return False
    anchors = reference.topk_indices(score, k)
    to_anchor = sim.gather(2, anchors[:, None, :].expand(-1, n, k))
    if k > 1:
        best2 = to_anchor.topk(2, dim=-1).values
        gap = best2[..., 0] - best2[..., 1]
        if ((gap > 0) & (gap < sim_margin)).any():
            return False
    return True


# ---- divprune_indices: the float64 greedy replayed, tolerating only rounding-level near-ties --------------


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


def assert_divprune_exact_or_close(got, x, k, tol=1e-5):
    """Exact equality with the reference where its decisions are separated by more than 10 x tol."""
    order, margin = reference.divprune_order(x.cpu(), k)
    if float(margin.min()) > 10 * tol:
        assert torch.equal(got.cpu(), order.sort(dim=1).values)
    else:
        assert_divprune_matches(got, x, k, tol)
