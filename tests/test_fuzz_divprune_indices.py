"""Property-based tests of divprune_indices (docs/ops.md §1b) against the float64 DivPrune greedy: shapes, dtypes,
strides, exact ties (duplicates, parallel tokens, D = 1), zero and tiny tokens. Picks within float32 rounding
of a rival may differ (conftest.assert_divprune_exact_or_close); everything else must equal the reference."""
import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import restore_ext
from conftest import DEVICES, assert_divprune_exact_or_close, fuzz_settings
from fuzz_strategies import Tokens, batches, generator, lengths, seeds, sprinkle, tokens



@st.composite
def divprune_cases(draw, max_n=700, max_k=40):
    """A feature recipe and k: up to max_k picks (the float64 replay is a Python loop), or all N when N is small."""
    x = draw(tokens(max_n))
    k = draw(st.integers(1, min(x.n, max_k)) | st.just(x.n if x.n <= max_k else 1))
    return x, k


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=divprune_cases())
def test_matches_reference(device, case):
    recipe, k = case
    x = recipe.build()
    got = restore_ext.divprune_indices(x.to(device), k)
    assert got.device.type == device and got.dtype == torch.long and got.shape == (x.shape[0], k)
    assert_divprune_exact_or_close(got, x, k, float64_ties_exact=recipe.float64_ties_exact)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5)
@given(recipe=st.builds(Tokens, b=st.integers(1, 3), n=lengths(300, min_len=3), d=st.sampled_from([1, 4, 64]),
                        dtype=st.sampled_from([torch.float32, torch.bfloat16]), kind=st.just("scaled"),
                        scale=st.sampled_from([3e19, 1e25, 1e30, 1e36]), seed=seeds), data=st.data())
def test_features_of_any_finite_magnitude(device, recipe, data):
    """docs/ops.md §1b: xn = x / max(||x||, 1e-12); a finite x has a finite norm in exact arithmetic, and the
    picks do not depend on the scale of x. (A float32 norm overflows once |x| ~ 2e19: every xn was 0 and the
    result silently 0 .. k-1; csrc/unit_tokens.cpp scales each token by its largest |x_i| first.)"""
    x = recipe.build()
    k = data.draw(st.integers(1, min(recipe.n, 30)))
    assert torch.isfinite(x).all()
    assert_divprune_exact_or_close(restore_ext.divprune_indices(x.to(device), k), x, k)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5)
@given(case=divprune_cases(max_n=200), fraction=st.sampled_from([0.01, 0.3, 1.0]), seed=seeds)
def test_nan_and_inf_features_still_give_k_distinct_indices(device, case, fraction, seed):
    """docs/ops.md does not define DivPrune's picks when a feature is NaN or inf (the kernel and the float64
    reference differ); what holds regardless is the shape of the answer: k distinct indices in [0, N),
    ascending, and no crash."""
    recipe, k = case
    x = sprinkle(recipe.build().contiguous(), [math.nan, math.inf, -math.inf], fraction, generator(seed))
    got = restore_ext.divprune_indices(x.to(device), k).cpu()
    b, n = x.shape[:2]
    assert got.shape == (b, k) and got.dtype == torch.long
    if b:
        assert int(got.min()) >= 0 and int(got.max()) < n
        assert (got.diff(dim=1) > 0).all(), "k distinct indices in ascending order"


@fuzz_settings(0.5)
@given(b=batches, data=st.data())
def test_k_out_of_range_is_refused(b, data):
    n = data.draw(lengths(100))
    k = data.draw(st.integers(-3, 0) | st.integers(n + 1, n + 3))
    msg = re.escape(f"divprune_indices: k must satisfy 1 <= k <= N = {n}") + r".*" + re.escape(f"got k = {k}")
    with pytest.raises(RuntimeError, match=msg):
        restore_ext.divprune_indices(torch.randn(b, n, 4), k)
