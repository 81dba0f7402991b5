"""VisPruner as a base selector (restore_ext.vispruner) against its float64 reference and the authors' loop."""
import pytest
import torch

import restore_ext
from restore_ext import reference
from restore_ext.vispruner import vispruner_indices, vispruner_rounds

from conftest import DEVICES, DTYPES
from scored_selector_check import (
    assert_matches, assert_selection, authors_formulation, bad_inputs, random_inputs, tie_inputs,
)

SHAPES = [  # (B, N, D): N = 1, tiny, odd, not a multiple of 16, LLaVA-1.5's 576 (odd residual for odd k // 2)
    (1, 1, 4), (2, 2, 8), (3, 7, 4), (2, 33, 8), (3, 100, 16), (2, 577, 32), (1, 576, 64),
]


def budgets(n):
    return sorted({1, 2, 3, max(1, n // 3), max(1, n - 1), n} & set(range(1, n + 1)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "clustered", "zeros"])
@pytest.mark.parametrize("b,n,d", SHAPES)
def test_float64_equals_reference(device, kind, b, n, d):
    x, att = random_inputs(b, n, d, seed=n * 7 + d, dtype=torch.float64, kind=kind)
    for k in budgets(n):
        got = vispruner_indices(x.to(device), k, att.to(device))
        assert_selection(got, b, k, device)
        want = reference.vispruner_selection(x, k, att)
        # float64 similarities from one matmul vs the reference's per-round ones differ by ~1e-16
        assert assert_matches(got, want.indices, want.margin, tol=1e-12) == b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_low_precision_matches_reference_away_from_near_ties(device, dtype):
    checked = 0
    for seed, (b, n, d, k) in enumerate([(3, 60, 16, 12), (2, 97, 32, 20), (4, 40, 8, 9)]):
        x, att = random_inputs(b, n, d, seed=seed, dtype=dtype, kind="clustered" if seed % 2 else "random")
        got = vispruner_indices(x.to(device), k, att.to(device))
        assert_selection(got, b, k, device)
        want = reference.vispruner_selection(x, k, att)  # the same low-precision values, in float64
        checked += assert_matches(got, want.indices, want.margin, tol=1e-5)
    assert checked >= 6, f"only {checked} of 9 rows were far enough from a near-tie to check"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("n", [12, 50, 203])
def test_exact_ties_go_to_the_lower_position(device, dtype, n):
    x, att = tie_inputs(3, n, seed=n)
    for k in budgets(n):
        got = vispruner_indices(x.to(device, dtype), k, att.to(device, dtype))
        want = reference.vispruner_indices(x, k, att)
        assert torch.equal(got.cpu(), want), (k, got.tolist(), want.tolist())
    same = torch.ones(1, 40, 3)  # every token identical, every attention equal: all ties
    got = vispruner_indices(same.to(device), 10, torch.full((1, 40), 0.5, device=device))
    assert torch.equal(got.cpu(), reference.vispruner_indices(same, 10, torch.full((1, 40), 0.5)))


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_independent(device):
    x, att = random_inputs(4, 150, 16, seed=3, dtype=torch.float64)
    x[2], att[2] = x[1].flip(0), att[1].flip(0)
    got = vispruner_indices(x.to(device), 30, att.to(device))
    for row in range(4):
        alone = vispruner_indices(x[row : row + 1].to(device), 30, att[row : row + 1].to(device))
        assert torch.equal(got[row : row + 1], alone)


@pytest.mark.parametrize("device", DEVICES)
def test_large_frames_use_the_neighbour_lists_and_compaction(device):
    # N = 1000 runs ~120 rounds, compacts the frame three times, and at D = 3 many top lists hold no B token.
    for d in (3, 24):
        x, att = random_inputs(2, 1000, d, seed=d, dtype=torch.float64, kind="clustered")
        got = vispruner_indices(x.to(device), 40, att.to(device))
        want = reference.vispruner_selection(x, 40, att)
        assert assert_matches(got, want.indices, want.margin, tol=1e-12) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_scale_does_not_matter(device):
    x, att = random_inputs(2, 80, 8, seed=5)
    want = vispruner_indices(x.to(device), 20, att.to(device))
    for scale in (1e-30, 1e30):  # the squared norm of 1e30 overflows float32
        assert torch.equal(vispruner_indices((x * scale).to(device), 20, att.to(device)), want)


def test_rounds_schedule():
    assert vispruner_rounds(544, 32) == [8] * 64
    assert vispruner_rounds(31, 2) == [8, 8, 8, 5, 1]  # an odd count, and rounds with fewer A tokens than asked
    assert vispruner_rounds(5, 5) == []


def test_reference_follows_the_authors_loop():
    authors = authors_formulation().authors_vispruner
    for b, n, d, k in [(2, 40, 16, 10), (3, 100, 8, 20), (1, 576, 32, 64), (4, 576, 16, 128), (2, 300, 8, 8)]:
        x, att = random_inputs(b, n, d, seed=k, dtype=torch.float64)
        assert torch.equal(reference.vispruner_indices(x, k, att), authors(x, k, att))


def test_bad_inputs_are_refused_clearly():
    bad_inputs(vispruner_indices, "vispruner_indices")


@pytest.mark.parametrize("device", DEVICES)
def test_select_and_reduce_with_base_vispruner(device):
    x, att = random_inputs(2, 120, 16, seed=11)
    x, att = x.to(device), att.to(device)
    assert torch.equal(restore_ext.select(x, 20, "vispruner", scores=att), vispruner_indices(x, 20, att))
    got = restore_ext.reduce(x, 40, base="vispruner", scores=att)
    want = restore_ext.restore_reduce(x, vispruner_indices(x, 20, att), 40)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    with pytest.raises(ValueError, match='base="vispruner" needs scores'):
        restore_ext.reduce(x, 40, base="vispruner")
