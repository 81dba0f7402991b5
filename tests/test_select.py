"""The base selectors of restore_ext.selectors: select, BASE_SELECTORS, uniform_indices (docs/ops.md §3b)."""
import pytest
import torch

from restore_ext import reference
from restore_ext.selectors import BASE_SELECTORS, select, uniform_indices

from conftest import DEVICES


def test_registry_names():
    assert sorted(BASE_SELECTORS) == ["cls", "divprune", "holov", "uniform", "vispruner"]


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (7, 3), (576, 64), (576, 192), (576, 576), (2880, 100), (10, 9)])
def test_uniform_formula(n, k):
    want = reference.uniform_indices(n, k)
    assert want.dtype == torch.long and want.shape == (k,)
    assert want.tolist() == sorted(set(want.tolist())) and 0 <= want[0] and want[-1] < n  # distinct, ascending, in range
    x = torch.randn(2, n, 3)
    got = select(x, k, "uniform")
    assert got.dtype == torch.long and got.tolist() == [want.tolist(), want.tolist()]
    assert uniform_indices(n, k).dtype == torch.long and torch.equal(uniform_indices(n, k), want)


@pytest.mark.parametrize("device", DEVICES)
def test_cls_selector_is_topk_of_scores(device):
    x = torch.randn(3, 50, 8, device=device)
    scores = torch.randn(3, 50)
    scores[0, 10] = scores[0, 20] = 5.0  # an exact tie
    got = select(x, 12, "cls", scores=scores.to(device)).cpu()
    assert torch.equal(got, reference.topk_indices(scores, 12))


def test_cls_selector_errors():
    x = torch.randn(2, 20, 4)
    with pytest.raises(ValueError, match='base="cls" needs scores'):
        select(x, 3, "cls")
    with pytest.raises(ValueError, match=r"scores of shape \(B, N\) = \(2, 20\)"):
        select(x, 3, "cls", scores=torch.randn(2, 19))


@pytest.mark.parametrize("device", DEVICES)
def test_divprune_selector(device):
    x = torch.randn(2, 30, 8)
    assert torch.equal(select(x.to(device), 9).cpu(), reference.divprune_indices(x, 9))


def test_callable_selector():
    x = torch.randn(2, 20, 4)
    got = select(x, 3, lambda f, k: torch.tensor([[9, 1, 4], [0, 19, 2]], dtype=torch.int32))
    assert got.dtype == torch.long and got.tolist() == [[1, 4, 9], [0, 2, 19]]


@pytest.mark.parametrize(
    "out,match",
    [
        ([[1, 2], [3, 4]], "must return a Tensor"),
        (torch.zeros(2, 2, dtype=torch.long), r"shape \(B, k\) = \(2, 3\)"),
        (torch.zeros(2, 3), "int32 or int64"),
        (torch.tensor([[0, 1, 20], [0, 1, 2]]), r"outside \[0, N = 20\)"),
        (torch.tensor([[0, 1, -1], [0, 1, 2]]), r"outside \[0, N = 20\)"),
        (torch.tensor([[0, 1, 1], [0, 1, 2]]), "repeated indices"),
    ],
)
def test_callable_selector_validation(out, match):
    x = torch.randn(2, 20, 4)

    def my_base(f, k):
        return out

    with pytest.raises((ValueError, TypeError), match=match) as info:
        select(x, 3, my_base)
    assert "my_base" in str(info.value)


def test_select_errors():
    x = torch.randn(2, 20, 4)
    with pytest.raises(ValueError, match="base must be one of"):
        select(x, 3, "fastv")
    with pytest.raises(ValueError, match="k must be an int with 1 <= k <= N = 20"):
        select(x, 0)
    with pytest.raises(ValueError, match="k must be an int with 1 <= k <= N = 20"):
        select(x, 21, "uniform")
    with pytest.raises(ValueError, match="features must be 3-D"):
        select(x[0], 3)
    with pytest.raises(ValueError, match="got 2.5"):
        select(x, 2.5)
    assert select(x, torch.tensor(3), "uniform").tolist() == [reference.uniform_indices(20, 3).tolist()] * 2
