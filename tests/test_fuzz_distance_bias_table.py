"""Property-based tests of distance_bias_table (docs/ops.md §4) against the float64 reference: table lengths from 1
to 5000, default, scaled and arbitrary inverse frequencies in any floating dtype and strides; the documented
ValueError for every argument out of contract. Budget: conftest.py."""
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, fuzz_settings
from fuzz_strategies import LAYOUTS, generator, lengths, seeds, with_layout

FREQ_KINDS = ["default", "scaled", "arbitrary", "zeros"]


def inv_freqs(kind, count, theta, dtype, layout, seed):
    gen = generator(seed)
    if kind == "default":  # default RoPE: theta ** (-arange(0, rotary_dim, 2) / rotary_dim)
        f = restore_ext.default_inv_freq(2 * count, theta)
    elif kind == "scaled":  # a scaled RoPE variant: some frequencies divided by a factor
        factor = torch.where(torch.rand(count, generator=gen) < 0.5, 8.0, 1.0)
        f = restore_ext.default_inv_freq(2 * count, theta) / factor
    elif kind == "arbitrary":  # any real frequency is meaningful in cos(d * f): negative, huge, tiny
        decades = torch.randint(-6, 4, (count,), generator=gen)
        f = torch.randn(count, generator=gen, dtype=torch.float64) * 10.0**decades
    else:
        f = torch.zeros(count, dtype=torch.float64)  # no rotation: decay 1 at every distance, a table of zeros
    return with_layout(f.to(dtype)[None], layout, dims=(0, 1))[0]


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(length=lengths(5000), kind=st.sampled_from(FREQ_KINDS), count=st.integers(1, 128),
       theta=st.sampled_from([10.0, 1e4, 5e5, 1e6]), dtype=st.sampled_from([torch.float64, torch.float32, torch.float16,
                                                                            torch.bfloat16]),
       layout=st.sampled_from(LAYOUTS), seed=seeds)
def test_matches_reference(device, length, kind, count, theta, dtype, layout, seed):
    inv_freq = inv_freqs(kind, count, theta, dtype, layout, seed)
    table = restore_ext.distance_bias_table(length, inv_freq.to(device))
    assert table.shape == (length,) and table.dtype == torch.float32 and table.device.type == device
    want = ref.distance_bias_table(length, inv_freq)
    torch.testing.assert_close(table.cpu(), want, rtol=1e-6, atol=1e-7)
    # mean cos >= -1, so table <= log(3) (equal where every cosine is -1, e.g. one frequency at d * f = pi)
    assert table[0] == 0 and table.isfinite().all() and (table <= torch.tensor(math.log(3)).float()).all()


BAD_LENGTHS = [0, -1, 3.7, 3.0, "5", None, True, torch.tensor(2.0), np.float32(4.0), [4]]
BAD_FREQS = {
    "2-D": (lambda: torch.ones(2, 2), "inv_freq must be a non-empty 1-D tensor"),
    "empty": (lambda: torch.ones(0), "inv_freq must be a non-empty 1-D tensor"),
    "0-d": (lambda: torch.tensor(1.0), "inv_freq must be a non-empty 1-D tensor"),
    "list": (lambda: [1.0, 0.1], "inv_freq must be a non-empty 1-D tensor"),
    "integer": (lambda: torch.arange(4), "inv_freq must be floating point"),
    "nan": (lambda: torch.tensor([1.0, math.nan]), "inv_freq must be finite"),
    "inf": (lambda: torch.tensor([math.inf, 0.1]), "inv_freq must be finite"),
}


@fuzz_settings(0.5)
@given(length=st.sampled_from(BAD_LENGTHS) | st.integers(-2**70, 0), count=st.integers(1, 16))
def test_bad_lengths_are_refused(length, count):
    with pytest.raises(ValueError, match=r"distance_bias_table: max_distance must be an int >= 1, got"):
        restore_ext.distance_bias_table(length, restore_ext.default_inv_freq(2 * count))


@fuzz_settings(0.5)
@given(length=lengths(100), bad=st.sampled_from(sorted(BAD_FREQS)))
def test_bad_inverse_frequencies_are_refused(length, bad):
    """A NaN or inf frequency used to give a table of NaN (table[0] = log(2 - cos(0 * inf))), which
    calibrated_attention then spreads over every output without an error."""
    make, words = BAD_FREQS[bad]
    with pytest.raises(ValueError, match="distance_bias_table: " + re.escape(words)):
        restore_ext.distance_bias_table(length, make())
