"""Inputs and checks shared by the tests of the score-ranked base selectors (VisPruner, HoloV)."""
import importlib.util
import math
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def authors_formulation():
    """benchmarks/authors_selectors.py: the authors' loops, which the float64 references must agree with."""
    path = os.path.join(ROOT, "benchmarks", "authors_selectors.py")
    spec = importlib.util.spec_from_file_location("authors_selectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_inputs(b, n, d, seed, dtype=torch.float32, kind="random"):
    """features (B, N, D) and a softmax-like [CLS] attention (B, N) >= 0."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    elif kind == "clustered":  # tokens near a few directions, as real patches of one object are
        centres = torch.randn(b, 6, d, generator=g, dtype=torch.float64) * 4
        which = torch.randint(0, 6, (b, n), generator=g)
        x = centres.gather(1, which[:, :, None].expand(b, n, d))
        x = x + 0.3 * torch.randn(b, n, d, generator=g, dtype=torch.float64)
    elif kind == "zeros":  # every 5th token the zero vector
        x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
        x[:, ::5] = 0
    else:
        raise ValueError(kind)
    att = torch.softmax(3 * torch.randn(b, n, generator=g, dtype=torch.float64), dim=-1)
    return x.to(dtype), att.to(dtype)


def tie_inputs(b, n, seed, directions=3, levels=4):
    """Exact ties everywhere: every token one of a few basis directions (cosines exactly 0 or 1 in any dtype,
    duplicates), attention on a few dyadic levels (equal values, exact sums)."""
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(0, directions, (b, n), generator=g)
    x = torch.nn.functional.one_hot(which, directions + 1).double() * 2.0
    att = torch.randint(0, levels, (b, n), generator=g).double() / 64
    return x, att


def assert_selection(got, b, k, device):
    assert got.dtype == torch.long and tuple(got.shape) == (b, k) and got.device.type == device
    assert torch.equal(got, got.sort(dim=1).values), "indices must be ascending"
    assert bool((got.diff(dim=1) > 0).all()), "indices must be distinct"


def assert_matches(got, want, margin, tol):
    """Rows must equal the reference where every decision is farther than `tol` from flipping; returns the
    number of rows checked so callers can insist the test was not vacuous."""
    checked = 0
    for row in range(got.shape[0]):
        if margin[row] > tol or math.isinf(margin[row]):
            g, w = got[row].cpu(), want[row].cpu()
            assert torch.equal(g, w), f"row {row}: {g.tolist()} != {w.tolist()}"
            checked += 1
    return checked


def bad_inputs(fn, name):
    """(arguments, words the error must contain) for each bad input both selectors must refuse clearly."""
    x = torch.randn(2, 20, 4)
    s = torch.rand(2, 20)
    nan_s, inf_x = s.clone(), x.clone()
    nan_s[1, 3] = math.nan
    inf_x[0, 2, 1] = math.inf
    cases = [
        ((torch.randn(20, 4), 3, s[0]), "features"),
        ((x.long(), 3, s), "features"),
        ((torch.randn(2, 20, 0), 3, s), "features"),
        ((x, 0, s), "k"),
        ((x, 21, s), "k"),
        ((x, True, s), "k"),
        ((x, 2.0, s), "k"),
        ((x, 3, None), "scores"),
        ((x, 3, s[:, :19]), "scores"),
        ((x, 3, s.long()), "scores"),
        ((x, 3, nan_s), "scores"),
        ((inf_x, 3, s), "features"),
    ]
    for args, word in cases:
        with pytest.raises(ValueError, match=f"{name}.*{word}"):
            fn(*args)
    meta = fn(x.to("meta"), 3, s.to("meta"))  # shapes only, as select and reduce do on meta tensors
    assert meta.is_meta and meta.shape == (2, 3) and meta.dtype == torch.long
    empty = fn(x[:0], 3, s[:0])  # an empty batch is not an error
    assert empty.shape == (0, 3) and empty.dtype == torch.long
