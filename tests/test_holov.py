"""HoloV as a base selector (restore_ext.holov) against its float64 reference and the authors' loop."""
import os
import subprocess
import sys

import pytest
import torch

import restore_ext
from restore_ext import reference
from restore_ext import ops
from restore_ext._scored_inputs import check_scored_inputs, compute_dtype
from restore_ext.holov import crop_budgets, crop_groups, crop_variance_torch, holov_indices, holov_indices_torch

from conftest import DEVICES, DTYPES
from scored_selector_check import (
    assert_matches, assert_selection, authors_formulation, bad_inputs, random_inputs, tie_inputs,
)

SHAPES = [  # (B, N, D): fewer tokens than crops, one-token crops, N % 16 != 0, LLaVA-1.5, LLaVA-NeXT's 2880
    (1, 1, 4), (2, 5, 4), (3, 16, 8), (2, 17, 8), (2, 31, 4), (3, 100, 16), (2, 577, 32), (1, 576, 64), (1, 2880, 16),
]


def holov_torch_ops(features, k, cls_attention):
    """The torch-op path (what CUDA runs), forced on the CPU too, where holov_indices calls the compiled op."""
    k = check_scored_inputs("holov_indices", features, k, cls_attention, nonnegative=True)
    return holov_indices_torch(features, k, cls_attention)


def holov_op(gram):
    """The compiled op with its crop Gram matrices in the features' dtype ("exact") or in bfloat16 with proven
    error bounds ("bf16"), whichever "auto" would pick on this machine."""
    def select(features, k, cls_attention):
        k = check_scored_inputs("holov_indices", features, k, cls_attention, nonnegative=True)
        return ops.holov_indices(features.to(compute_dtype(features)), k, cls_attention, gram)
    return select


PATHS = {"public": holov_indices, "torch_ops": holov_torch_ops, "op_exact": holov_op("exact"),
         "op_bf16": holov_op("bf16")}


def selector(path, device):
    if path != "public" and device != "cpu":
        pytest.skip("off the CPU holov_indices is the torch-op path, and the compiled op is CPU only")
    return PATHS[path]


def budgets(n):
    # k = 1, small, above one crop's length (n // 16 + 1), most of N, N
    return sorted({1, 3, n // 16 + 2, max(1, n // 3), max(1, n - 2), n} & set(range(1, n + 1)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "clustered", "zeros"])
@pytest.mark.parametrize("b,n,d", SHAPES)
def test_float64_equals_reference(device, kind, b, n, d, path):
    select_holov = selector(path, device)
    x, att = random_inputs(b, n, d, seed=n * 5 + d, dtype=torch.float64, kind=kind)
    for k in budgets(n):
        got = select_holov(x.to(device), k, att.to(device))
        assert_selection(got, b, k, device)
        want = reference.holov_selection(x, k, att)
        assert assert_matches(got, want.indices, want.margin, tol=1e-12) == b


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_matches_reference_away_from_near_ties(device, dtype, path):
    select_holov = selector(path, device)
    checked = 0
    for seed, (b, n, d, k) in enumerate([(3, 60, 16, 12), (2, 577, 32, 64), (4, 200, 8, 40)]):
        x, att = random_inputs(b, n, d, seed=seed, dtype=dtype, kind="clustered" if seed % 2 else "random")
        got = select_holov(x.to(device), k, att.to(device))
        assert_selection(got, b, k, device)
        want = reference.holov_selection(x, k, att)  # the same low-precision values, in float64
        checked += assert_matches(got, want.indices, want.margin, tol=1e-7)
    assert checked >= 6, f"only {checked} of 9 rows were far enough from a near-tie to check"


def crop_tie_inputs(b, n, seed):
    """Exact ties at every level HoloV ranks: crops of one length repeat one of two token patterns (so equal crop
    weights are bitwise equal in any implementation that treats crops alike), and attention inside a pattern
    sits on a few dyadic levels (equal tokens within a crop)."""
    x, att = tie_inputs(b, n, seed)
    for start, count, m in crop_groups(n):
        for c in range(count):
            pattern = start + (m if c % 3 == 1 and count > 1 else 0)  # crops 1, 4, 7, ... copy the second crop
            lo = start + c * m
            x[:, lo : lo + m], att[:, lo : lo + m] = x[:, pattern : pattern + m], att[:, pattern : pattern + m]
    return x, att


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("n", [12, 50, 208])
def test_exact_ties_go_to_the_lower_index(device, dtype, n, path):
    select_holov = selector(path, device)
    x, att = crop_tie_inputs(3, n, seed=n)
    for k in budgets(n):
        got = select_holov(x.to(device, dtype), k, att.to(device, dtype))
        assert torch.equal(got.cpu(), reference.holov_indices(x, k, att)), k
    # identical crops with equal attention: equal weights, the shortfall goes to the first crops
    same = torch.ones(1, 64, 3)
    for k in (5, 20, 64):
        got = select_holov(same.to(device), k, torch.full((1, 64), 0.25, device=device))
        assert torch.equal(got.cpu(), reference.holov_indices(same, k, torch.full((1, 64), 0.25)))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
def test_budget_above_a_crop_is_redistributed(device, path):
    select_holov = selector(path, device)
    # All attention on the first crop: it is asked for more tokens than it holds and the rest spill over.
    x, att = random_inputs(2, 160, 8, seed=9, dtype=torch.float64)
    att[:, :10] += 1.0
    for k in (15, 40, 150):
        got = select_holov(x.to(device), k, att.to(device))
        assert torch.equal(got.cpu(), reference.holov_indices(x, k, att))
        assert bool((got[:, :10] == torch.arange(10, device=device)).all())  # the first crop is kept whole


def test_crop_layout_and_budgets():
    assert crop_groups(576) == [(0, 16, 36)]
    assert crop_groups(2885) == [(0, 5, 181), (905, 11, 180)]
    assert crop_groups(5) == [(0, 5, 1)]
    sizes = torch.tensor([3, 3, 2])
    budget = crop_budgets(torch.tensor([[10.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64), [3, 3, 2], 7)
    # row 0: floor [5, 0, 0], shortfall to crops 0, 1 -> [6, 1, 0], clamp [3, 1, 0], +1 to 1 and 2, +1 to 1
    # row 1: all weights 0: +1 each (shortfall), +1 each, then +1 to crop 0 (ties to the lower index)
    assert budget.tolist() == [[3, 3, 1], [3, 2, 2]]
    assert budget.sum(1).tolist() == [7, 7] and bool((budget <= sizes).all())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_independent(device, path):
    select_holov = selector(path, device)
    x, att = random_inputs(4, 150, 16, seed=3, dtype=torch.float64)
    x[2], att[2] = x[1].flip(0), att[1].flip(0)
    got = select_holov(x.to(device), 30, att.to(device))
    for row in range(4):
        alone = select_holov(x[row : row + 1].to(device), 30, att[row : row + 1].to(device))
        assert torch.equal(got[row : row + 1], alone)


def test_reference_follows_the_authors_loop():
    authors = authors_formulation().authors_holov
    for b, n, d, k in [(2, 40, 16, 10), (3, 100, 8, 20), (1, 576, 32, 64), (2, 577, 16, 128), (1, 17, 4, 16),
                       (1, 10, 4, 3), (1, 2880, 8, 96)]:
        x, att = random_inputs(b, n, d, seed=k, dtype=torch.float64)
        assert torch.equal(reference.holov_indices(x, k, att), authors(x, k, att))


# (B, C, m, D); D > 1024 and D % 16 != 0 reach every part of the AVX-512 Gram kernel (chunks, masked tail)
CROP_SHAPES = [(1, 1, 2, 1), (2, 3, 5, 4), (3, 16, 36, 64), (2, 5, 181, 17), (1, 2, 9, 300), (1, 3, 7, 2100)]


def crops_of_every_kind(b, c, m, d, dtype, seed):
    """Random crops, plus one with a zero token, one of identical tokens, one of tiny and one of huge norms (the
    op's pre-normalised path) where the shape has room."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, m, d, generator=g, dtype=torch.float64)
    if c >= 3:
        x[0, 0, 0] = 0
        x[0, 1] = x[0, 1, :1]
        x[-1, 2] *= 1e-20 if m % 2 else 1e20
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_variance_op_equals_reference(dtype):
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)
    for seed, shape in enumerate(CROP_SHAPES):
        x = crops_of_every_kind(*shape, dtype, seed)
        want = reference.holov_crop_variance(x)
        torch.testing.assert_close(ops.holov_crop_variance(x), want, **tol)
        # a crop group's view of the features (batch stride over every crop), and crops that are not packed rows
        wide = torch.cat([x, x], dim=1)[:, shape[1]:]
        torch.testing.assert_close(ops.holov_crop_variance(wide), want, **tol)
        torch.testing.assert_close(ops.holov_crop_variance(x.transpose(0, 1).contiguous().transpose(0, 1)), want,
                                   **tol)
        torch.testing.assert_close(ops.holov_crop_variance(x.mT.contiguous().mT), want, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_variance_torch_ops_equal_reference(device, dtype):
    # What holov_indices runs off the CPU.
    tol = dict(rtol=1e-12, atol=1e-15) if dtype == torch.float64 else dict(rtol=2e-5, atol=1e-7)
    for seed, shape in enumerate(CROP_SHAPES):
        x = crops_of_every_kind(*shape, dtype, seed)
        got = crop_variance_torch(x.to(device)).cpu()
        torch.testing.assert_close(got, reference.holov_crop_variance(x), **tol)


def test_crop_variance_op_checks_and_compiles():
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.restore.holov_crop_variance.default, (x,))
    compiled = torch.compile(ops.holov_crop_variance, fullgraph=True)
    assert torch.equal(compiled(x), ops.holov_crop_variance(x))
    assert ops.holov_crop_variance(x[:0]).shape == (0, 3)
    for bad, words in [(x[0], "4-D"), (x.half(), "float32 or float64"), (x[:, :, :1], "m >= 2"),
                       (x[..., :0], "D >= 1")]:
        with pytest.raises(RuntimeError, match=f"holov_crop_variance: .*{words}"):
            ops.holov_crop_variance(bad)
    for value in (float("nan"), float("inf")):
        poisoned = x.clone()
        poisoned[1, 2, 3, 4] = value
        with pytest.raises(RuntimeError, match="holov_crop_variance: x must be finite"):
            ops.holov_crop_variance(poisoned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_op_equals_torch_ops_path(dtype):
    # The compiled op and the torch-op path (CUDA's) are two implementations of one rule: the same tokens on
    # fresh inputs of every kind, with k from 1 to N.
    for seed, (b, n, d) in enumerate([(3, 7, 5), (2, 33, 8), (4, 160, 16), (2, 577, 24), (1, 2885, 8)]):
        for kind in ("random", "clustered", "zeros"):
            x, att = random_inputs(b, n, d, seed=seed + 100, dtype=dtype, kind=kind)
            for k in budgets(n):
                assert torch.equal(ops.holov_indices(x, k, att), holov_torch_ops(x, k, att)), (b, n, d, kind, k)


def test_op_checks_and_compiles():
    x, att = random_inputs(2, 40, 6, seed=1)
    torch.library.opcheck(torch.ops.restore.holov_indices.default, (x, 7, att))
    torch.library.opcheck(torch.ops.restore.holov_indices.default, (x.double(), 40, att.half()))
    compiled = torch.compile(ops.holov_indices, fullgraph=True)
    assert torch.equal(compiled(x, 7, att), ops.holov_indices(x, 7, att))
    assert ops.holov_indices(x[:0], 3, att[:0]).shape == (0, 3)
    strided = torch.randn(2, 6, 40).transpose(1, 2)  # a view with D not innermost: read through a copy
    assert torch.equal(ops.holov_indices(strided, 9, att), ops.holov_indices(strided.contiguous(), 9, att))
    for args, words in [((x[0], 3, att), "features must be 3-D"), ((x.half(), 3, att), "float32 or float64"),
                        ((x[..., :0], 3, att), "D >= 1"), ((x, 0, att), "1 <= k <= N = 40"),
                        ((x, 41, att), "1 <= k <= N = 40"), ((x, 3, att[:, :5]), r"shape \(B, N\) = \(2, 40\)"),
                        ((x, 3, att.long()), "cls_attention must be float")]:
        with pytest.raises((RuntimeError, ValueError), match=f"holov_indices: .*{words}"):
            ops.holov_indices(*args)
    for value in (float("nan"), float("inf"), -1e-3):
        bad = att.clone()
        bad[1, 5] = value
        words = "must be >= 0" if value < 0 else "must be finite"
        with pytest.raises(RuntimeError, match=f"holov_indices: cls_attention {words}"):
            ops.holov_indices(x, 3, bad)
    for value in (float("nan"), float("inf")):
        bad = x.clone()
        bad[1, 5, 2] = value
        with pytest.raises(RuntimeError, match="holov_indices: features must be finite"):
            ops.holov_indices(bad, 3, att)
        with pytest.raises(ValueError, match="holov_indices: features must be finite"):
            holov_indices(bad, 3, att)


def common_component_crops(b, c, m, d, seed, spread):
    """Crops of tokens that share one direction (cosines near 1 - spread^2 / 2), as real patch features do."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64)
    return common + spread * torch.randn(b, c, m, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_crop_variance_bounds_contain_reference(dtype):
    # The interval is a proof: it holds for zero, identical, tiny and huge rows too, whatever its width there.
    for seed, shape in enumerate(CROP_SHAPES + [(2, 16, 36, 1024), (1, 4, 180, 256), (1, 3, 36, 4096)]):
        cases = [crops_of_every_kind(*shape, dtype, seed)]
        cases += [common_component_crops(*shape, seed, spread).to(dtype) for spread in (0.05, 0.5)]
        for x in cases:
            got = ops.holov_crop_variance_bounds(x)
            v = reference.holov_crop_variance(x)
            assert got.shape == (*x.shape[:2], 2) and got.dtype == torch.float64
            assert bool((got[..., 0] <= v).all() and (v <= got[..., 1]).all()), (shape, seed)


@pytest.mark.parametrize("kind", ["random", "common"])
def test_crop_variance_bounds_are_tight_enough_to_decide(kind):
    # What makes gram="bf16" pay: on ordinary crops the interval is a few percent of V wide (so a crop score,
    # which moves by ~0.08 * 1e-6 / V of V's relative error, is known to ~1e-5 or better).
    for seed, (b, c, m, d) in enumerate([(2, 16, 36, 1024), (1, 16, 180, 1024), (1, 16, 36, 4096)]):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, c, m, d, generator=g) if kind == "random" else common_component_crops(b, c, m, d, seed, 0.1)
        got = ops.holov_crop_variance_bounds(x.float())
        v = reference.holov_crop_variance(x.float())
        width = (got[..., 1] - got[..., 0]) / v
        assert bool((got[..., 0] > 0).all()) and width.max() < 0.5, (b, c, m, d, width.max().item())


def test_crop_variance_bounds_op_checks_and_compiles():
    x = torch.randn(2, 3, 6, 5)
    torch.library.opcheck(torch.ops.restore.holov_crop_variance_bounds.default, (x,))
    compiled = torch.compile(ops.holov_crop_variance_bounds, fullgraph=True)
    assert torch.equal(compiled(x), ops.holov_crop_variance_bounds(x))
    assert ops.holov_crop_variance_bounds(x[:0]).shape == (0, 3, 2)
    for bad, words in [(x[0], "4-D"), (x.half(), "float32 or float64"), (x[:, :, :1], "m >= 2"),
                       (x[..., :0], "D >= 1")]:
        with pytest.raises(RuntimeError, match=f"holov_crop_variance_bounds: .*{words}"):
            ops.holov_crop_variance_bounds(bad)
    poisoned = x.clone()
    poisoned[1, 2, 3, 4] = float("nan")
    with pytest.raises(RuntimeError, match="holov_crop_variance_bounds: x must be finite"):
        ops.holov_crop_variance_bounds(poisoned)


@pytest.mark.parametrize("n", [64, 577])
def test_bf16_gram_falls_back_where_the_bounds_cannot_decide(n):
    # Crops 2k and 2k+1 hold the same tokens up to a 1e-7 perturbation and the same attention: their scores
    # differ by far less than the bfloat16 interval, so every budget that hinges on their order (which crop gets
    # the shortfall) must come from the exact V. float64, so that the exact V orders them as the reference does.
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, 16, generator=g, dtype=torch.float64)
    att = torch.rand(3, n, generator=g, dtype=torch.float64)
    for start, count, m in crop_groups(n):
        for c in range(0, count - 1, 2):
            lo = start + c * m
            x[:, lo + m : lo + 2 * m] = x[:, lo : lo + m] * (1 + 1e-7 * torch.randn(3, m, 16, generator=g,
                                                                                    dtype=torch.float64))
            att[:, lo + m : lo + 2 * m] = att[:, lo : lo + m]
    for k in budgets(n):
        want = reference.holov_indices(x, k, att)
        assert torch.equal(ops.holov_indices(x, k, att, "bf16"), want), k
        assert torch.equal(ops.holov_indices(x, k, att, "exact"), want), k


def test_gram_choice():
    x, att = random_inputs(2, 40, 6, seed=1)
    assert torch.equal(ops.holov_indices(x, 7, att, "auto"), ops.holov_indices(x, 7, att, "exact"))
    with pytest.raises(RuntimeError, match='holov_indices: gram must be "auto", "exact" or "bf16", got "fp8"'):
        ops.holov_indices(x, 7, att, "fp8")


def test_bad_inputs_are_refused_clearly():
    bad_inputs(holov_indices, "holov_indices")
    x = torch.randn(1, 20, 4)
    with pytest.raises(ValueError, match="holov_indices.*scores.*>= 0"):
        holov_indices(x, 3, torch.randn(1, 20))


@pytest.mark.parametrize("device", DEVICES)
def test_select_and_reduce_with_base_holov(device):
    x, att = random_inputs(2, 120, 16, seed=11)
    x, att = x.to(device), att.to(device)
    assert torch.equal(restore_ext.select(x, 20, "holov", scores=att), holov_indices(x, 20, att))
    got = restore_ext.reduce(x, 40, base="holov", scores=att)
    want = restore_ext.restore_reduce(x, holov_indices(x, 20, att), 40)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(ValueError, match='base="holov" needs scores'):
        restore_ext.reduce(x, 40, base="holov")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("device", DEVICES)
def test_features_near_the_float32_limits(device, path):
    select_holov = selector(path, device)
    # Squares of 1e25 overflow float32 and those of 1e-25 underflow: the rows are pre-scaled, the result is still
    # the reference's (HoloV's 1e-6 in |x| + 1e-6 makes tiny features score as near-zero similarities, as theirs).
    x, att = random_inputs(2, 100, 8, seed=4)
    for scale in (1e25, 1e-25):
        got = select_holov((x * scale).to(device), 20, att.to(device))
        assert torch.equal(got.cpu(), reference.holov_indices((x * scale).double(), 20, att))


def test_fallbacks_without_avx512_and_amx():
    # The BLAS paths that CPUs without AVX-512 or AMX take (SGEMM for the exact Gram; MKL's bfloat16 GEMM, or
    # SGEMM on bfloat16 values, under the bound), run here in a process that switches both kernels off.
    code = """
import torch
from restore_ext import ops, reference
from test_holov import CROP_SHAPES, budgets, common_component_crops, crops_of_every_kind
for seed, shape in enumerate(CROP_SHAPES + [(1, 4, 180, 256)]):
    x = crops_of_every_kind(*shape, torch.float32, seed)
    v = reference.holov_crop_variance(x)
    torch.testing.assert_close(ops.holov_crop_variance(x), v, rtol=2e-5, atol=1e-7)
    for y in (x, common_component_crops(*shape, seed, 0.05).float()):
        got, v = ops.holov_crop_variance_bounds(y), reference.holov_crop_variance(y)
        assert bool((got[..., 0] <= v).all() and (v <= got[..., 1]).all()), shape
g = torch.Generator().manual_seed(0)
x, att = torch.randn(2, 1300, 24, generator=g, dtype=torch.float64), torch.rand(2, 1300, generator=g, dtype=torch.float64)
for k in budgets(1300):
    assert torch.equal(ops.holov_indices(x, k, att, "bf16"), reference.holov_indices(x, k, att)), k
print("fallbacks ok")
"""
    env = dict(os.environ, RESTORE_EXT_NO_AMX="1", RESTORE_EXT_NO_AVX512="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "fallbacks ok" in done.stdout, done.stderr[-3000:]
