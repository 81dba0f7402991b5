"""Hypothesis strategies and tensor builders shared by tests/test_fuzz_*.py (not a test module).

Hypothesis draws the structure of an example (sizes, dtype, layout, which special values go where) and a seed;
the tensor values come from a torch.Generator with that seed. Drawing every element through hypothesis would be
slow for the sizes that matter (N in the thousands), and the seed still makes each example reproducible from the
printed falsifying example alone.
"""
import math

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)
# Batch rows: 1 most often; 0 (empty results) now and then; a few for row independence.
batches = st.sampled_from([1, 1, 2, 3, 5, 0])


def lengths(max_len: int, min_len: int = 1):
    """Sequence lengths: 1, primes (no block size divides them), powers of two and neighbours, and anything
    in [min_len, max_len]; 'large' means max_len."""
    special = [1, 2, 3, 5, 7, 13, 31, 32, 33, 63, 64, 65, 127, 257, 577, 1031, 2053, 4099]
    special = [n for n in special if min_len <= n <= max_len] + [max_len]
    return st.one_of(st.sampled_from(special), st.integers(min_len, max_len))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def special_values(dtype):
    """The floating values where kernels go wrong: signed zeros, infinities, the largest and the smallest
    (subnormal) numbers of the dtype, NaN."""
    fi = torch.finfo(dtype)
    return [0.0, -0.0, math.inf, -math.inf, fi.max, -fi.max, fi.tiny / 4, -fi.tiny / 4, math.nan]


def sprinkle(x: torch.Tensor, values, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of `x` where each element is, with probability `fraction`, replaced by one of `values`."""
    hit = torch.rand(x.shape, generator=gen) < fraction
    pick = torch.randint(0, len(values), x.shape, generator=gen)
    table = torch.tensor(values, dtype=torch.float64).to(x.dtype)
    return torch.where(hit, table[pick], x)


# ---- layouts: the same values seen through other strides ----------------------------------------------------

LAYOUTS = ["contiguous", "transposed", "sliced", "offset"]


def with_layout(x: torch.Tensor, layout: str, dims=(0, 1)) -> torch.Tensor:
    """`x`'s values through other strides. transposed: dims[0] and dims[1] swapped in memory; sliced: every
    other element along dims[1] of a larger buffer whose gaps hold NaN (or -1 for integers), so a kernel that
    reads a gap shows; offset: a view that starts inside its storage."""
    a, b = dims
    if layout == "contiguous":
        return x.contiguous()
    if layout == "transposed":
        return x.transpose(a, b).contiguous().transpose(a, b)
    fill = math.nan if x.is_floating_point() else -1
    if layout == "sliced":
        shape = list(x.shape)
        shape[b] *= 2
        big = torch.full(shape, fill, dtype=x.dtype)
        view = big[(slice(None),) * b + (slice(None, None, 2),)]
        view.copy_(x)
        return view
    if layout == "offset":
        flat = torch.full((x.numel() + 3,), fill, dtype=x.dtype)
        view = flat[3:].view(x.shape)
        view.copy_(x)
        return view
    raise ValueError(layout)


def broadcast_along(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`x` with every slice along `dim` equal to the first, as a stride-0 expand (the values change: the
    reference sees the same repeated values)."""
    if x.shape[dim] == 0:
        return x
    return x.narrow(dim, 0, 1).expand(x.shape)
