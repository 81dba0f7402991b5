"""VisPruner as a base selector (restore_ext.vispruner) against its float64 reference and the authors' loop."""
import pytest
import torch

import restore_ext
from restore_ext import reference
from restore_ext import ops
from restore_ext.vispruner import matching_rounds, vispruner_indices, vispruner_rounds

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


def random_sims(b, r, seed, dtype=torch.float64, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # a few values only: every comparison in every round is likely a tie
        return (torch.randint(0, 4, (b, r, r), generator=g).to(dtype) / 4)
    return (2 * torch.rand(b, r, r, generator=g, dtype=torch.float64) - 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_matching_op_equals_reference(dtype, ties):
    cases = [(1, 1, 1), (2, 2, 1), (3, 15, 2), (2, 31, 7), (1, 100, 1), (4, 140, 50), (2, 600, 16), (1, 9, 9)]
    for b, r, keep in cases:
        sim = random_sims(b, r, seed=r + keep, dtype=dtype, ties=ties)
        got = ops.vispruner_matching(sim, keep)
        assert torch.equal(got, reference.vispruner_matching(sim, keep)), (b, r, keep)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ties", [False, True])
def test_matching_composite_equals_reference(device, ties):
    # The torch-op rounds (what runs off the CPU): direct A x B blocks, top lists, frame compaction.
    for b, r, keep in [(2, 15, 2), (2, 31, 7), (3, 300, 20), (1, 900, 40)]:
        sim = random_sims(b, r, seed=r, ties=ties)
        got = matching_rounds(sim.to(device), keep).sort(dim=1).values.cpu()
        assert torch.equal(got, reference.vispruner_matching(sim, keep)), (b, r, keep)


def test_matching_composite_reads_full_rows_when_top_lists_miss():
    # Clustered tokens at D = 3: many rows' 16 nearest are all A tokens, so the full-row fallback runs.
    x, _ = random_inputs(2, 1000, 3, seed=3, dtype=torch.float64, kind="clustered")
    sim = x @ x.transpose(1, 2) / (x.norm(dim=-1)[:, :, None] * x.norm(dim=-1)[:, None, :])
    got = matching_rounds(sim, 40).sort(dim=1).values
    assert torch.equal(got, reference.vispruner_matching(sim, 40))


def test_matching_op_checks_and_compiles():
    sim = random_sims(2, 20, seed=1, dtype=torch.float32)
    torch.library.opcheck(torch.ops.restore.vispruner_matching.default, (sim, 5))
    compiled = torch.compile(lambda s: ops.vispruner_matching(s, 5), fullgraph=True)
    assert torch.equal(compiled(sim), ops.vispruner_matching(sim, 5))
    for bad, word in [(sim[:, :, :19], "square"), (sim.half(), "float32 or float64"), (sim[0], "3-D")]:
        with pytest.raises(RuntimeError, match=f"vispruner_matching: sim must .*{word}"):
            ops.vispruner_matching(bad, 5)
    for keep in (0, 21):
        with pytest.raises(RuntimeError, match="vispruner_matching: keep must satisfy 1 <= keep <= R = 20"):
            ops.vispruner_matching(sim, keep)
    for value in (float("nan"), float("inf")):
        poisoned = sim.clone()
        poisoned[1, 3, 7] = value
        with pytest.raises(RuntimeError, match="vispruner_matching: sim must be finite"):
            ops.vispruner_matching(poisoned, 5)


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
