"""Property-based tests of restore_reduce (docs/ops.md §3), select and reduce (§3b) against restore_ext.reference:
any shape, dtype and strides of the features, retained indices in any order, dtype and layout, every base
selector (a callable too) and keep ratio, NaN / inf features; and the documented ValueError for everything
out of contract. Budget: conftest.py."""
import math
import re

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from restore_ext.reduction import kept_count
from conftest import (DEVICES, assert_divprune_exact_or_close, assert_slot_means, decisions_well_separated,
                      fuzz_settings)
from fuzz_strategies import LAYOUTS, generator, seeds, special_values, sprinkle, tokens, with_layout

rules = st.sampled_from(["reference", "dpc"])


def assert_reduced(out, x, num_out):
    """docs/ops.md §3's invariants, whatever the base method kept and however near-ties resolved."""
    b, n, d = x.shape
    tokens, size, position, source = (t.cpu() for t in out)
    assert tokens.shape == (b, num_out, d) and tokens.dtype == x.dtype
    assert size.shape == position.shape == (b, num_out) and source.shape == (b, n)
    assert size.dtype == position.dtype == source.dtype == torch.long
    if not b:
        return
    assert (size >= 1).all() and (size.sum(1) == n).all()
    assert (position.diff(dim=1) > 0).all(), "positions strictly increase"
    counts = torch.zeros(b, num_out, dtype=torch.long).scatter_add_(1, source, torch.ones_like(source))
    assert torch.equal(counts, size), "every token lands in one output; size counts them"
    # Each output keeps the lower median of its members' indices: members sorted by (slot, index).
    by_slot = (source * n + torch.arange(n)).sort(dim=1).values % n
    assert torch.equal(position, by_slot.gather(1, size.cumsum(1) - size + (size - 1) // 2)), "lower median"
    assert_slot_means(tokens, x, source, counts)
    single = size == 1  # a retained token, or an anchor alone: the input token itself, bit for bit
    same = tokens == x.gather(1, position[:, :, None].expand(b, num_out, d))
    assert (same | (tokens.isnan() & x.gather(1, position[:, :, None].expand(b, num_out, d)).isnan()))[single].all()


@st.composite
def restore_reduce_cases(draw):
    recipe = draw(tokens(300))
    r = draw(st.integers(0, recipe.n - 1) | st.sampled_from([0, recipe.n - 1])) if recipe.n > 1 else 0
    num_out = draw(st.integers(r + 1, recipe.n))
    poison = draw(st.sampled_from([0.0, 0.0, 0.0, 0.01, 0.2]))  # fraction of NaN / inf features
    layout, index_dtype = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from([torch.int32, torch.int64]))
    return recipe, r, num_out, index_dtype, layout, poison, draw(rules), draw(seeds)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=restore_reduce_cases())
def test_restore_reduce_matches_reference(device, case):
    recipe, r, num_out, index_dtype, layout, poison, rule, seed = case
    gen = generator(seed)
    x = recipe.build()
    if poison:
        x = sprinkle(x, [math.nan, math.inf, -math.inf], poison, gen)
    b, n, _ = x.shape
    retained = torch.stack([torch.randperm(n, generator=gen)[:r] for _ in range(b)]) if b else torch.empty(0, r).long()
    retained = with_layout(retained.to(index_dtype), layout)
    out = restore_ext.restore_reduce(x.to(device), retained.to(device), num_out, rule)
    assert_reduced(out, x, num_out)
    if not b:
        return
    is_rest = torch.ones(b, n, dtype=torch.bool).scatter_(1, retained.long(), False)
    rest_x = x[is_rest].view(b, n - r, -1)
    exact = recipe.kind == "axis_aligned" or decisions_well_separated(rest_x, num_out - r, rule)
    event(f"compared with the reference: {exact}")
    if exact:
        want = ref.restore_reduce(x, retained, num_out, rule)
        for name in ("size", "position", "source"):
            assert torch.equal(getattr(out, name).cpu(), getattr(want, name)), name


def select_reference(x, k, base, scores):
    if base == "uniform":
        return ref.uniform_indices(x.shape[1], k).expand(x.shape[0], k)
    return ref.topk_indices(scores, k)


@st.composite
def reduce_cases(draw):
    recipe = draw(tokens(200, min_n=2))  # N = 1 can only be refused (test_out_of_contract_arguments_are_refused)
    n = recipe.n
    refuse = draw(st.sampled_from([None, None, None, None, "num_tokens", "keep_ratio"]))  # mostly valid calls
    num_tokens = draw(st.integers(2, max(2, n)) | st.sampled_from([2, n]))
    keep_ratio = draw(st.floats(0, 1) | st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    if refuse == "num_tokens":
        num_tokens = draw(st.sampled_from([-1, 0, 1, n + 1]))
    elif refuse == "keep_ratio":
        keep_ratio = draw(st.sampled_from([-0.1, 1.5, math.inf, math.nan]))
    base = draw(st.sampled_from(["divprune", "cls", "uniform", "callable"]))
    scores = draw(st.sampled_from(["normal", "ties", "specials"]))
    return recipe, num_tokens, keep_ratio, base, scores, draw(rules), draw(seeds)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=reduce_cases())
def test_reduce_is_select_then_restore_reduce(device, case):
    recipe, num_tokens, keep_ratio, base, score_kind, rule, seed = case
    gen = generator(seed)
    x = recipe.build()
    b, n, _ = x.shape
    scores = torch.randn(b, n, generator=gen)
    if score_kind == "ties":
        scores = scores.round()
    elif score_kind == "specials":
        scores = sprinkle(scores, special_values(torch.float32), 0.2, gen)
    picked = {}

    def by_callable(features, k):  # a user's base method: any order, int32
        picked["idx"] = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(b)]).int() if b else \
            torch.empty(0, k, dtype=torch.int32)
        return picked["idx"].to(features.device)

    base_arg = by_callable if base == "callable" else base
    args = (x.to(device), num_tokens)
    kwargs = dict(base=base_arg, keep_ratio=keep_ratio, scores=scores.to(device), rule=rule)
    if not 2 <= num_tokens <= n:
        event("refused: num_tokens")
        msg = re.escape(f"reduce: num_tokens must be an int with 2 <= num_tokens <= N = {n}")
        with pytest.raises(ValueError, match=msg):
            restore_ext.reduce(*args, **kwargs)
        return
    if not 0 <= keep_ratio <= 1:
        event("refused: keep_ratio")
        with pytest.raises(ValueError, match=re.escape("reduce: keep_ratio must be a number in [0, 1]")):
            restore_ext.reduce(*args, **kwargs)
        return
    r = kept_count(num_tokens, keep_ratio)
    if not 1 <= r < num_tokens:
        event("refused: R")
        with pytest.raises(ValueError, match=re.escape(f"RESTORE needs 1 <= R < num_tokens = {num_tokens}")):
            restore_ext.reduce(*args, **kwargs)
        return
    event(f"reduced ({base})")
    out = restore_ext.reduce(*args, **kwargs)
    assert_reduced(out, x, num_tokens)
    if not b:
        return
    # The same base selection, then restore_reduce: the outputs must be the same tensors.
    if base == "divprune":
        retained = restore_ext.select(x.to(device), r, "divprune").cpu()
        assert_divprune_exact_or_close(retained, x, r, float64_ties_exact=recipe.float64_ties_exact)
    elif base == "callable":
        retained = picked["idx"].long().sort(dim=1).values
    else:
        retained = restore_ext.select(x.to(device), r, base, scores.to(device)).cpu()
        assert torch.equal(retained, select_reference(x, r, base, scores))
    single = torch.zeros(b, n, dtype=torch.bool).scatter_(1, out.position.cpu(), out.size.cpu() == 1)
    assert single.gather(1, retained).all(), "every retained token is an output of its own"
    again = restore_ext.restore_reduce(x.to(device), retained.to(device), num_tokens, rule)
    for name, got, want in zip(out._fields, out, again):
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=name)


@fuzz_settings(0.5)
@given(recipe=tokens(50, b=2), seed=seeds, data=st.data())
def test_out_of_contract_arguments_are_refused(recipe, seed, data):
    """docs/ops.md Errors: restore_reduce and select raise ValueError naming the function and the argument."""
    x, n, gen = recipe.build(), recipe.n, generator(seed)
    k = data.draw(st.integers(-2, 0) | st.integers(n + 1, n + 2))
    with pytest.raises(ValueError, match=re.escape(f"select: k must be an int with 1 <= k <= N = {n}")):
        restore_ext.select(x, k, data.draw(st.sampled_from(["divprune", "uniform"])))
    if n < 2:
        return
    r = data.draw(st.integers(1, n - 1))
    retained = torch.stack([torch.randperm(n, generator=gen)[:r] for _ in range(2)])
    bad = data.draw(st.sampled_from(["out_of_range", "negative", "repeated", "float", "num_out"]))
    num_out = r + 1
    if bad == "out_of_range":
        retained[1, -1], words = n, f"retained indices must lie in [0, N = {n})"
    elif bad == "negative":
        retained[0, 0], words = -1, f"retained indices must lie in [0, N = {n})"
    elif bad == "repeated" and r > 1:
        retained[1, 1], words = retained[1, 0], "retained indices must be distinct within each row"
    elif bad == "float":
        retained, words = retained.float(), "retained must be int32 or int64"
    else:
        num_out, words = data.draw(st.sampled_from([r, n + 1, 0])), f"num_out must satisfy R = {r} < num_out <= N = {n}"
    with pytest.raises(ValueError, match="restore_reduce: " + re.escape(words)):
        restore_ext.restore_reduce(x, retained, num_out)
