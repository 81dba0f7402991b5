"""Hypothesis strategies and tensor builders shared by tests/test_fuzz_*.py (not a test module).

Hypothesis draws the structure of an example (sizes, dtype, layout, which special values go where) and a seed;
the tensor values come from a torch.Generator with that seed. Drawing every element through hypothesis would be
slow for the sizes that matter (N in the thousands), and the seed still makes each example reproducible from the
printed falsifying example alone.
"""
import math
from dataclasses import dataclass

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
    in [min_len, max_len]; 'large' means max_len; 0 (empty) now and then where min_len = 0."""
    special = [0, 1, 2, 3, 5, 7, 13, 31, 32, 33, 63, 64, 65, 127, 257, 577, 1031, 2053, 4099]
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


# ---- token features (B, N, D): a printable recipe, built inside the test -----------------------------------

TOKEN_KINDS = ["random", "clustered", "duplicates", "zeros", "axis_aligned", "tiny", "scaled"]
# Stride 0 along B (rows repeat), N (every token the same: a full tie) or D (tokens parallel or opposite).
STRIDE_0 = ["rows_repeated", "tokens_identical", "constant_along_d"]


@dataclass(frozen=True)
class Tokens:
    """How to make a (B, N, D) feature tensor. Hypothesis prints this recipe for a failing example (readable,
    and enough to rebuild the tensor: `Tokens(...).build()`)."""

    b: int
    n: int
    d: int
    dtype: torch.dtype
    kind: str = "random"
    layout: str = "contiguous"
    seed: int = 0
    scale: float = 1.0

    @property
    def float64_ties_exact(self) -> bool:
        """Duplicated or parallel tokens tie in exact arithmetic, but their self-similarity 1 - ||xn||^2 rounds
        differently per token, in float64 too, and sub-floor tokens' similarities are near 0 in any precision:
        their float64 ties may be rounding coincidences that float32 breaks another way (see
        conftest.assert_divprune_matches)."""
        return self.kind not in ("duplicates", "tiny") and self.layout not in ("tokens_identical", "constant_along_d")

    def build(self) -> torch.Tensor:
        b, n, d, gen = self.b, self.n, self.d, generator(self.seed)
        x = torch.randn(b, n, d, generator=gen)
        if self.kind == "clustered":  # a few far-apart directions, tokens near them
            centres = torch.randn(b, 5, d, generator=gen) * 4
            which = torch.randint(0, 5, (b, n), generator=gen)
            x = centres.gather(1, which[:, :, None].expand(b, n, d)) + 0.3 * x
        elif self.kind == "duplicates":  # copies of a third of the tokens: exact ties everywhere
            x = x.gather(1, torch.randint(0, max(1, n // 3), (b, n, 1), generator=gen).expand(b, n, d))
        elif self.kind == "zeros":  # zero tokens: similarity exactly 0 with everything
            x = x * (torch.rand(b, n, 1, generator=gen) < 0.7)
        elif self.kind == "axis_aligned":  # positive multiples of a few axes: similarities exactly 0 or 1
            axis = torch.randint(0, min(d, 5), (b, n), generator=gen)
            x = torch.nn.functional.one_hot(axis, d).double() * torch.randint(1, 4, (b, n, 1), generator=gen)
        elif self.kind == "tiny":  # norms below the contract's 1e-12 floor (float16 cannot go that low)
            x = x * (1e-6 if self.dtype == torch.float16 else 1e-20)
        x = (x.double() * self.scale).to(self.dtype)
        if self.layout in STRIDE_0:
            return broadcast_along(x, STRIDE_0.index(self.layout))
        transposed_dims = (1, 2) if self.seed % 2 else (0, 1)
        return with_layout(x, self.layout, transposed_dims)


def scales_for(dtype):
    """Feature scales every dtype holds with room for sums of N terms (1e18: squared norms near float32's max)."""
    return [1.0, 1.0, 1e-3, 1e3] + ([] if dtype == torch.float16 else [1e9, 1e18])


@st.composite
def tokens(draw, max_n, kinds=TOKEN_KINDS, dims=(1, 2, 3, 8, 17, 64, 130), dtypes=dtypes, layouts=None, b=None,
           min_n=1):
    dtype = draw(dtypes)
    kind = draw(st.sampled_from(kinds))
    scale = draw(st.sampled_from(scales_for(dtype))) if kind == "scaled" else 1.0
    return Tokens(
        b=draw(batches) if b is None else b, n=draw(lengths(max_n, min_n)), d=draw(st.sampled_from(dims)), dtype=dtype,
        kind=kind, layout=draw(st.sampled_from(layouts or LAYOUTS + STRIDE_0)), seed=draw(seeds), scale=scale,
    )
