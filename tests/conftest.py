"""Shared test helpers: devices and dtypes, a crash-proof subprocess runner, FlashAttention's tolerance rule and
its eager yardstick, the decision-margin checks that let discrete results (anchors, DivPrune picks) be
compared exactly with the float64 reference, and the example budget of the property-based (hypothesis) tests.
Test modules import these from here, never from each other."""
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

import restore_ext  # noqa: F401  (registers torch.ops.restore.*)
from restore_ext import reference
from restore_ext.attention_bias import dense_attention_bias

# tests/vllm/ needs vLLM's own virtual environment (`make test-vllm` sets RESTORE_TEST_VLLM=1); the main run never
# collects it, so it never imports vllm.
collect_ignore = [] if os.environ.get("RESTORE_TEST_VLLM") == "1" else ["vllm"]

HAS_CUDA = torch.cuda.is_available()

# ---- hypothesis: the example budget of tests/test_fuzz_*.py -------------------------------------------------
# "ci" (the default, what `make test` runs): a small fixed budget, derandomized and without an example
# database, so every run draws the same examples and a failure reproduces from the printed example alone.
# "fuzz" (`make fuzz`): 25x the budget, fresh random examples each run, failures kept in .hypothesis/ and
# replayed first next time. Choose with RESTORE_EXT_FUZZ_PROFILE=fuzz or pytest's --hypothesis-profile=fuzz.
# No deadline: these machines are shared, a slow example is not a bug.
_PROFILE = dict(deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=20, derandomize=True, database=None, **_PROFILE)
settings.register_profile("fuzz", max_examples=500, **_PROFILE)
settings.load_profile(os.environ.get("RESTORE_EXT_FUZZ_PROFILE", "ci"))


def fuzz_settings(weight: float = 1.0, shrink: bool = True) -> settings:
    """The loaded profile with its example budget scaled by `weight` (for a test whose examples cost more or
    less than most). Called at import time of a test module, i.e. after --hypothesis-profile was applied.
    shrink=False for the xfail(strict=True) tests of known bugs: they fail by design until fixed, and shrinking
    a failure each run would cost minutes; the first failing example is printed as drawn."""
    phases = tuple(settings.default.phases) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(max_examples=max(1, round(settings.default.max_examples * weight)), phases=phases)
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
    (gap 0) are fine: both sides resolve them by index; but not a value within rounding of a tie without being
    equal to it (float64 may say -1 and -1 - 2e-16 where float32 says -1 twice), which other rounding could
    move into or out of the tie."""
    sim, density, _, score = reference.anchor_scores(x, rule)
    b, n = x.shape[:2]
    scale = density.abs().amax(-1, keepdim=True).clamp_min(1)
    d_gaps = _sorted_gaps(density) / scale
    if n > 1 and ((d_gaps > 0) & (d_gaps < rel_margin)).any():
        return False
    if k < n:
        top = score.sort(dim=-1, descending=True).values
        first_out = top[:, k : k + 1]
        gap = (top[:, k - 1 : k] - first_out) / scale
        if ((gap > 0) & (gap < rel_margin)).any():
            return False
        near_tie = ((score - first_out).abs() / scale < rel_margin) & (score != first_out)
        if (near_tie & (gap == 0)).any():
            return False
    anchors = reference.topk_indices(score, k)
    # NaN similarities never win (docs/ops.md); an anchor's own slot is not a decision.
    to_anchor = sim.gather(2, anchors[:, None, :].expand(-1, n, k)).nan_to_num(nan=-math.inf)
    if k > 1:
        best = to_anchor.amax(-1, keepdim=True)
        near_tie = ((best - to_anchor) < sim_margin) & (to_anchor != best)
        is_anchor = torch.zeros(b, n, dtype=torch.bool).scatter_(1, anchors, True)
        if (near_tie.any(-1) & ~is_anchor).any():
            return False
    return True


MEAN_RTOL = {torch.float32: 1.3e-6, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}  # one rounding to the dtype


def assert_slot_means(merged, x, assign, counts):
    """merged (B, K, D) = the plain mean of each slot's members of x (B, N, D) under assign (B, N), counts (B, K)
    (docs/ops.md §2 step 8). Allowed error: the rounding of the mean to x's dtype, plus what summing m members in
    float32 may lose, ~m * 2^-24 of their largest magnitude (every op accumulates in float32 at least)."""
    b, n, d = x.shape
    k = counts.shape[1]
    xd = x.double()
    rows = torch.arange(b)[:, None]
    mean = torch.zeros(b, k, d, dtype=torch.float64).index_put_((rows, assign), xd, accumulate=True) / counts[..., None]
    magnitude = xd.abs().nan_to_num(0.0, posinf=0.0).amax(-1)
    slot_max = torch.zeros(b, k, dtype=torch.float64).scatter_reduce(1, assign, magnitude, "amax")
    fi = torch.finfo(x.dtype)
    tol = MEAN_RTOL[x.dtype] * mean.abs() + (counts * 2.0**-24 * slot_max)[..., None] + fi.tiny * fi.eps
    got = merged.double()
    same_special = (got == mean) | (got.isnan() & mean.isnan())
    bad = ~same_special & ~((got - mean).abs() <= tol)
    assert not bad.any(), f"merged means off at {bad.nonzero()[:5].tolist()}: got {got[bad][:5]}, want {mean[bad][:5]}"


# ---- divprune_indices: the float64 greedy replayed, tolerating only rounding-level near-ties --------------


def assert_divprune_matches(got, x, k, tol=1e-5, float64_ties_exact=True):
    """`got` (B, k) must be what the float64 greedy picks, except that where the best and another candidate are
    within `tol` in distance (a float32 kernel may rank them either way), any of them may be picked: the replay
    then follows the kernel's choice. Exact ties (equal in float64) must go to the lower index.

    `float64_ties_exact=False` is for inputs whose float64 ties can be rounding coincidences that float32
    rounds apart (duplicated or parallel tokens: 1 - ||xn||^2 is 0 only up to rounding, differently per token;
    tokens under the 1e-12 norm floor): a float64 tie then binds only bitwise-identical tokens, which every
    precision computes alike, so of two identical candidates the lower index must still be picked."""
    got = got.cpu()
    assert got.shape == (x.shape[0], k) and got.dtype == torch.long
    assert torch.equal(got, got.sort(dim=1).values), "indices must be ascending"
    b, n, _ = x.shape
    xd = x.detach().cpu().double()
    xn = xd / xd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    dist = -(xn @ xn.transpose(-1, -2))  # distance - 1, as reference.divprune_order compares it
    for row in range(b):
        want = set(got[row].tolist())
        assert len(want) == k, f"row {row}: repeated indices {got[row].tolist()}"
        d = dist[row]

        in_result = torch.zeros(n, dtype=torch.bool)
        in_result[got[row]] = True
        same_as = lambda c: (xd[row] == xd[row, c]).all(-1)  # noqa: E731  (bitwise-identical tokens)

        def pick(values, step):
            best = values.max()
            first_best = int(torch.nonzero(values == best)[0])
            if in_result[first_best]:  # the exact winner, ties to the lower index
                return first_best
            ok = (values >= best - tol) & in_result
            if float64_ties_exact:
                ok &= values < best
            assert ok.any(), (
                f"row {row} step {step}: the greedy picks {first_best} (distance {1 + float(best):.9f}); no token "
                f"of the result is within {tol} of it"
            )
            c = int(torch.where(ok, values, -math.inf).argmax())  # the first maximum: lower index on ties
            twins = torch.nonzero(same_as(c)[:c] & ~in_result[:c] & (values[:c] > -math.inf)).flatten()
            assert not twins.numel(), f"row {row} step {step}: picked {c} over an identical lower token {twins[0]}"
            return c

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


def assert_divprune_exact_or_close(got, x, k, tol=1e-5, float64_ties_exact=True):
    """Exact equality with the reference where its decisions are separated by more than 10 x tol."""
    order, margin = reference.divprune_order(x.cpu(), k)
    if not margin.numel() or float(margin.min()) > 10 * tol:
        assert torch.equal(got.cpu(), order.sort(dim=1).values)
    else:
        assert_divprune_matches(got, x, k, tol, float64_ties_exact)
