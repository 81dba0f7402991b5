"""Property-based tests of anchor_merge (docs/ops.md §2) against the float64 reference.

Where every decision (better-than relation, anchor choice, token -> anchor) is clear of float32 rounding
(conftest.decisions_well_separated) or exact by construction, all outputs must equal the reference. Elsewhere
near-ties may legitimately resolve either way (docs/ops.md, "Numerical choices"), and the outputs must be *a*
correct answer: anchors no worse than the reference allows within rounding, every token in the slot of its
most similar anchor, sizes and means exactly those of the kernel's own assignment.
"""
import math
import re

import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, assert_slot_means, decisions_well_separated, fuzz_settings
from fuzz_strategies import batches, generator, lengths, seeds, sprinkle, tokens

REL_MARGIN, SIM_MARGIN = 2e-6, 1e-5  # float32 rounding of densities / scores (relative) and similarities
rules = st.sampled_from(["reference", "dpc"])


@st.composite
def merge_cases(draw, max_n=400, **token_args):
    x = draw(tokens(max_n, **token_args))
    k = draw(st.integers(1, x.n) | st.sampled_from([1, x.n]))
    return x, k, draw(rules)


def exact_by_construction(recipe):
    """Similarities exactly 0 or 1 (axis-aligned tokens, one token repeated), so every decision is exact."""
    return recipe.kind == "axis_aligned" or recipe.layout == "tokens_identical"


def score_bounds(x, rule):
    """Per token, the lowest and highest score (§2 step 5) that float32 rounding can give: a better-than
    relation whose densities are within rounding of each other may hold or not."""
    sim, density, _, _ = ref.anchor_scores(x, rule)
    tau = REL_MARGIN * density.abs().amax(-1, keepdim=True).clamp_min(1)[..., None]
    d_i, d_j = density[:, :, None], density[:, None, :]
    gap = d_i - d_j if rule == "reference" else d_j - d_i  # > 0: j is better than i
    not_self = ~torch.eye(x.shape[1], dtype=torch.bool)
    sure, maybe = gap > tau, (gap.abs() <= tau) & not_self
    neg = torch.full_like(sim, -math.inf)
    sure_max = torch.where(sure, sim, neg).amax(-1)
    any_max = torch.where(sure | maybe, sim, neg).amax(-1)
    maybe_min = torch.where(maybe, sim, -neg).amin(-1)
    has_sure = sure.any(-1)
    lo = torch.where(has_sure, sure_max, torch.clamp(maybe_min, max=0.0))  # no better token: nearest = 0
    hi = torch.where(has_sure, any_max, torch.clamp(any_max, min=0.0))
    a, b = density * (1 - hi), density * (1 - lo)
    return torch.minimum(a, b), torch.maximum(a, b), density, sim


def assert_a_correct_answer(out, x, k, rule):
    """What holds for every resolution of the near-ties."""
    b, n, d = x.shape
    anchors, assign, size, merged = (t.cpu() for t in (out.anchors, out.assign, out.size, out.merged))
    rows = torch.arange(b)[:, None]
    assert (anchors.diff(dim=1) > 0).all() and (anchors >= 0).all() and (anchors < n).all()
    assert torch.equal(assign[rows, anchors], torch.arange(k).expand(b, k)), "an anchor takes its own slot"
    assert (assign >= 0).all() and (assign < k).all()
    counts = torch.zeros(b, k, dtype=torch.long).scatter_add_(1, assign, torch.ones_like(assign))
    assert torch.equal(size, counts), "size counts each slot's tokens"
    assert_slot_means(merged, x, assign, counts)

    lo, hi, density, sim = score_bounds(x, rule)
    # Every token in the slot of its most similar anchor (NaN never wins; no number at all -> slot 0).
    to_anchor = sim.gather(2, anchors[:, None, :].expand(b, n, k)).nan_to_num(nan=-math.inf)
    best = to_anchor.amax(-1)
    got = to_anchor.gather(2, assign[..., None])[..., 0]
    member = torch.ones(b, n, dtype=torch.bool).index_put_((rows, anchors), torch.tensor(False))
    clean = best > -math.inf
    assert (got[member & clean] >= best[member & clean] - SIM_MARGIN).all(), "a token joined a less similar anchor"
    assert (assign[member & ~clean] == 0).all(), "a token with no similarity to any anchor takes slot 0"
    for row in range(b):
        if density[row].isnan().any():  # a NaN or inf feature: every density NaN, anchors are the first K
            assert anchors[row].tolist() == list(range(k))
            continue
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[anchors[row]] = True
        if k < n:
            tau = REL_MARGIN * float(density[row].abs().max().clamp_min(1))
            assert float(hi[row][chosen].min()) >= float(lo[row][~chosen].max()) - tau, "a clearly worse anchor"


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=merge_cases())
def test_matches_reference(device, case):
    recipe, k, rule = case
    x = recipe.build()
    out = restore_ext.anchor_merge(x.to(device), k, rule)
    b, n, d = x.shape
    assert out.merged.shape == (b, k, d) and out.merged.dtype == x.dtype
    assert out.size.shape == out.anchors.shape == (b, k) and out.assign.shape == (b, n)
    assert out.size.dtype == out.assign.dtype == out.anchors.dtype == torch.long
    exact = exact_by_construction(recipe) or decisions_well_separated(x, k, rule)
    event(f"compared with the reference: {exact}")
    if exact:
        exp = ref.anchor_merge(x, k, rule)
        for name in ("anchors", "assign", "size"):
            assert torch.equal(getattr(out, name).cpu(), getattr(exp, name)), name
    assert_a_correct_answer(out, x, k, rule)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5)
@given(case=merge_cases(max_n=150), fraction=st.sampled_from([0.005, 0.05, 0.5]), whole_token=st.booleans(),
       seed=seeds)
def test_nan_and_inf_features(device, case, fraction, whole_token, seed):
    """docs/ops.md "NaN in anchor_merge": a NaN or inf feature makes its row's densities NaN, the anchors are
    the first K tokens, a NaN similarity never wins the assignment and a token with no number at all takes
    slot 0. Means carry the NaN / inf of their members."""
    recipe, k, rule = case
    gen = generator(seed)
    x = sprinkle(recipe.build(), [math.nan, math.inf, -math.inf], fraction, gen)
    if whole_token:  # poison every feature of a token, not one
        x = torch.where(x.isfinite().all(-1, keepdim=True), x, torch.full_like(x, math.nan))
    out = restore_ext.anchor_merge(x.to(device), k, rule)
    assert_a_correct_answer(out, x, k, rule)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5, shrink=False)
@given(case=merge_cases(max_n=200, kinds=["random", "clustered", "duplicates"],
                        dtypes=st.sampled_from([torch.float32, torch.bfloat16])),
       top=st.sampled_from([1e38, 3e38, torch.finfo(torch.float32).max]))
def test_features_near_the_float32_limit(device, case, top):
    """Every cluster's mean of finite features is finite; the sum of a cluster's members is not (item 7)."""
    recipe, k, rule = case
    small = recipe.build()
    assume(small.numel() > 0)
    if recipe.n < 2 or k == recipe.n:
        k = max(1, recipe.n - 1)
    x = (small.double() / small.double().abs().amax().clamp_min(1e-30) * top).to(small.dtype)
    x = x.where(x.isfinite(), torch.zeros((), dtype=x.dtype))  # bfloat16 rounds the very top to inf
    out = restore_ext.anchor_merge(x.to(device), k, rule)
    assert out.merged.isfinite().all(), "a cluster mean overflowed"
    assert_a_correct_answer(out, x, k, rule)


@fuzz_settings(0.25)
@given(b=batches, data=st.data())
def test_num_anchors_out_of_range_is_refused(b, data):
    n = data.draw(lengths(100))
    k = data.draw(st.integers(-3, 0) | st.integers(n + 1, n + 3))
    msg = re.escape(f"anchor_merge: num_anchors must satisfy 1 <= K <= N = {n}")
    msg += r".*" + re.escape(f"got num_anchors = {k}")
    with pytest.raises(RuntimeError, match=msg):
        restore_ext.anchor_merge(torch.randn(b, n, 4), k)
