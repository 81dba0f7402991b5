"""Property-based tests of topk_indices (docs/ops.md §1) against the float64 reference: any shape, dtype, strides,
ties, NaN / inf / signed zeros / extremes; indices must equal the reference exactly. Budget: conftest.py."""
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, fuzz_settings
from fuzz_strategies import (LAYOUTS, INT64_MAX, batches, broadcast_along, dtypes, generator, lengths, seeds,
                             special_values, sprinkle, with_layout)

VALUES = ["normal", "few_distinct", "specials", "mostly_specials", "huge", "constant"]


@st.composite
def topk_cases(draw):
    b, n, dtype = draw(batches), draw(lengths(5000)), draw(dtypes)
    k = draw(st.one_of(st.integers(1, n), st.sampled_from([1, n])))
    values, seed = draw(st.sampled_from(VALUES)), draw(seeds)
    layout = draw(st.sampled_from(LAYOUTS + ["rows_repeated", "row_constant"]))
    gen = generator(seed)
    s = torch.randn(b, n, generator=gen, dtype=torch.float64)
    if values == "few_distinct":  # nearly every choice at the k boundary is a tie
        s = torch.randint(-2, 3, (b, n), generator=gen).double()
    elif values in ("specials", "mostly_specials"):
        s = sprinkle(s, special_values(dtype), 0.1 if values == "specials" else 0.9, gen)
    elif values == "huge":  # values that round to neighbours, or to inf, in the low-precision dtypes
        s = s * torch.finfo(dtype).max / 3
    elif values == "constant":
        s = torch.full((b, n), draw(st.sampled_from([0.0, -0.0, float("nan"), float("-inf")])), dtype=torch.float64)
    s = s.to(dtype)
    if layout == "rows_repeated":
        s = broadcast_along(s, 0)  # stride 0 along B
    elif layout == "row_constant":
        s = broadcast_along(s, 1)  # stride 0 along N: every row one value, a full tie
    else:
        s = with_layout(s, layout)
    return s, k


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=topk_cases())
def test_matches_reference(device, case):
    scores, k = case
    out = restore_ext.topk_indices(scores.to(device), k)
    assert out.dtype == torch.long and out.shape == (scores.shape[0], k) and out.device.type == device
    torch.testing.assert_close(out.cpu(), ref.topk_indices(scores, k), rtol=0, atol=0)


def out_of_range(n):
    """k just below 1, just above N, or at the top of int64."""
    return st.one_of(st.integers(-3, 0), st.integers(n + 1, n + 3), st.integers(INT64_MAX - 2, INT64_MAX))


@fuzz_settings(0.5)
@given(b=batches, data=st.data())
def test_k_out_of_range_is_refused(b, data):
    """docs/ops.md Errors: the message names the op, k, the range with this N, and the k given."""
    n = data.draw(lengths(100))
    k = data.draw(out_of_range(n))
    msg = re.escape(f"topk_indices: k must satisfy 1 <= k <= N = {n}") + r".*" + re.escape(f"got k = {k}")
    with pytest.raises(RuntimeError, match=msg):
        restore_ext.topk_indices(torch.randn(b, n), k)


@fuzz_settings(0.25)
@given(dtype=st.sampled_from([torch.float64, torch.int32, torch.int64, torch.bool, torch.uint8]), n=lengths(50))
def test_other_dtypes_are_refused(dtype, n):
    with pytest.raises(RuntimeError, match=r"topk_indices: scores must be float16, bfloat16 or float32"):
        restore_ext.topk_indices(torch.zeros(2, n, dtype=dtype), 1)
