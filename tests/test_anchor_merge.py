"""anchor_merge (docs/ops.md §2) against the float64 reference.

Anchors and assignments are discrete choices; a float32 kernel agrees with float64 math on them exactly
whenever the decision margins exceed float32 rounding. Random inputs are therefore drawn until their
margins are clear (and the ones used in ties tests are exact by construction, e.g. axis-aligned tokens).
"""
import pytest
import torch

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, DTYPES, decisions_well_separated

RTOL = {torch.float32: 1.3e-6, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}


def well_separated_input(b, n, d, k, rule, dtype, device, clustered):
    gen = torch.Generator().manual_seed(1000 * n + 10 * k + b)
    for _ in range(50):
        if clustered:
            centers = torch.randn(max(2, n // 20), d, generator=gen) * 3
            which = torch.randint(0, centers.shape[0], (b, n), generator=gen)
            x = centers[which] + torch.randn(b, n, d, generator=gen)
        else:
            x = torch.randn(b, n, d, generator=gen)
        x = x.to(dtype)
        if decisions_well_separated(x, k, rule):
            return x.to(device)
    pytest.fail(f"no input with clear decision margins found for n={n} k={k}")


def check_against_reference(x, k, rule):
    out = restore_ext.anchor_merge(x, k, rule)
    exp = ref.anchor_merge(x.cpu(), k, rule)
    b, n, d = x.shape
    assert out.merged.shape == (b, k, d) and out.merged.dtype == x.dtype
    assert out.size.dtype == out.assign.dtype == out.anchors.dtype == torch.long
    torch.testing.assert_close(out.anchors.cpu(), exp.anchors, rtol=0, atol=0)
    torch.testing.assert_close(out.assign.cpu(), exp.assign, rtol=0, atol=0)
    torch.testing.assert_close(out.size.cpu(), exp.size, rtol=0, atol=0)
    torch.testing.assert_close(out.merged.cpu().double(), exp.merged, rtol=RTOL[x.dtype], atol=1e-5)
    assert (out.size.sum(-1) == n).all() and (out.size >= 1).all()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["reference", "dpc"])
@pytest.mark.parametrize(
    "b,n,d,k,clustered",
    [(1, 1, 8, 1, False), (2, 2, 8, 1, False), (2, 2, 8, 2, False), (3, 40, 16, 1, True), (2, 64, 32, 32, False),
     (2, 64, 32, 64, False), (2, 576, 64, 32, True), (1, 576, 128, 288, False)],
)
def test_matches_reference(device, dtype, rule, b, n, d, k, clustered):
    x = well_separated_input(b, n, d, k, rule, dtype, device, clustered)
    check_against_reference(x, k, rule)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", ["reference", "dpc"])
def test_exact_ties_duplicates_and_zero_vectors(device, rule):
    # Axis-aligned tokens of positive length: every similarity is exactly 0 or 1 in any precision, so
    # densities, scores and assignments tie exactly and the lower-index rules decide.
    gen = torch.Generator().manual_seed(7)
    axis = torch.randint(0, 5, (3, 90), generator=gen)
    length = torch.randint(1, 4, (3, 90), generator=gen).float()
    x = torch.nn.functional.one_hot(axis, 8).float() * length[..., None]
    x[1, ::7] = 0.0  # zero vectors: similarity 0 with everything, density 0
    x = x.to(device)
    for k in (1, 3, 5, 8, 45, 90):
        check_against_reference(x, k, rule)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("poisoned", [0, 2])
def test_nan_anchor_never_captures_tokens(device, poisoned):
    """A NaN feature (an fp16 overflow upstream) makes every density NaN, so the anchors are the first K
    tokens by index, and the poisoned anchor's similarity column is NaN. A NaN similarity never wins the
    token -> anchor argmax, on every device and in the reference: the clean tokens still join their own
    cluster's anchor instead of all landing in the poisoned slot."""
    x = torch.zeros(1, 12, 8)
    for i in range(12):
        x[0, i, i % 4] = 1.0 + 0.1 * i  # four clusters; tokens 0-3 (the anchors) one of each
    x[0, poisoned, 6] = float("nan")
    got = restore_ext.anchor_merge(x.to(device), 4)
    want = ref.anchor_merge(x, 4)
    assert got.anchors.tolist() == [[0, 1, 2, 3]]
    # The poisoned cluster's other tokens are orthogonal to every clean anchor: a tie at 0, lowest clean slot.
    orphan_slot = 1 if poisoned == 0 else 0
    clean = [i % 4 if i % 4 != poisoned else orphan_slot for i in range(12)]
    clean[poisoned] = poisoned  # an anchor keeps its own slot
    assert want.assign.tolist() == [clean]
    for name in ("anchors", "assign", "size"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    torch.testing.assert_close(got.merged.cpu(), want.merged.float(), equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_k_equals_n_is_identity(device):
    x = torch.randn(2, 33, 12, device=device)
    out = restore_ext.anchor_merge(x, 33)
    assert out.anchors.tolist() == [list(range(33))] * 2
    assert out.assign.tolist() == [list(range(33))] * 2
    assert (out.size == 1).all()
    torch.testing.assert_close(out.merged, x)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_input(device):
    base = well_separated_input(2, 100, 24, 10, "reference", torch.float32, device, True)
    x = base.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (N, D) strides swapped
    assert not x.is_contiguous()
    check_against_reference(x, 10, "reference")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in [(torch.randn(2, 30, 8, device=device), 4), (torch.randn(1, 9, 4, device=device).bfloat16(), 9, "dpc")]:
        torch.library.opcheck(torch.ops.restore.anchor_merge.default, args)
