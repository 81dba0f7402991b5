"""Base selectors: which R tokens a base method keeps before RESTORE merges the rest (docs/ops.md §3b).

The kept tokens are :func:`restore_ext.restore_reduce`'s ``retained`` (docs/ops.md §3).

Every selector maps ``features`` (B, N, D) and ``k`` (1 <= k <= N) to (B, k) int64 token indices, distinct
and in ascending order per row. Registered names (:data:`BASE_SELECTORS`):

- ``"divprune"``: DivPrune's max-min diversity greedy on cosine distance
  (:func:`restore_ext.ops.divprune_indices`); needs nothing but the features.
- ``"cls"``: the k tokens with the highest user-given ``scores`` (B, N), e.g. the [CLS] token's attention to
  each patch in the vision tower's penultimate layer, as VisionZip and VisPruner keep their dominant tokens
  (:func:`restore_ext.ops.topk_indices`: ties to the lower index, NaN lowest).
- ``"vispruner"``: VisPruner (Zhang et al., ICCV 2025) as the RESTORE authors run it: the k // 2 tokens with the
  highest ``scores`` ([CLS] attention), the rest by VisPruner's iterative duplicate removal
  (:func:`restore_ext.vispruner.vispruner_indices`).
- ``"holov"``: HoloV (Zou et al., NeurIPS 2025) with index tracking and budget redistribution as the authors
  run it: 16 contiguous crops get budgets from attention and similarity variance, each keeps its
  highest-attention tokens (:func:`restore_ext.holov.holov_indices`; ``scores`` must be >= 0).
- ``"uniform"``: the centre of each of k equal bins of the image order,
  ``index_i = floor((2 i + 1) N / (2 k))`` for i = 0 .. k-1 (:func:`uniform_indices`). Consecutive indices
  differ by N/k >= 1 before flooring, so they are distinct and ascending; k = N gives 0 .. N-1.

``base`` may also be a callable ``base(features, k) -> Tensor`` (B, k) of integer indices; its output is
checked (shape, integer dtype, device, range, distinctness) and returned as int64 in ascending order.
"""
from typing import Callable, Dict, Optional, Union

import torch
from torch import Tensor

from . import ops
from .holov import holov_indices
from .validation import as_int, check_features
from .vispruner import vispruner_indices

Selector = Callable[[Tensor, int], Tensor]


def uniform_indices(n: int, k: int, device=None) -> Tensor:
    """``floor((2 i + 1) * n / (2 k))`` for i = 0 .. k-1: the centres of k equal bins of [0, n), int64."""
    i = torch.arange(k, dtype=torch.long, device=device)
    return torch.div((2 * i + 1) * n, 2 * k, rounding_mode="floor")


def _divprune(features: Tensor, k: int, scores: Optional[Tensor]) -> Tensor:
    return ops.divprune_indices(features, k)


def _cls(features: Tensor, k: int, scores: Optional[Tensor]) -> Tensor:
    if scores is None:
        raise ValueError(
            'select: base="cls" needs scores (B, N): the [CLS] attention each token receives; got scores=None'
        )
    b, n = features.shape[0], features.shape[1]
    if not isinstance(scores, Tensor) or scores.dim() != 2 or tuple(scores.shape) != (b, n):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f'select: base="cls" needs scores of shape (B, N) = ({b}, {n}), got {shape}')
    if scores.device != features.device:
        raise ValueError(f"select: scores is on {scores.device} but features on {features.device}")
    return ops.topk_indices(scores, k)


def _needs_scores(name: str, selector: Callable[[Tensor, int, Tensor], Tensor]):
    def run(features: Tensor, k: int, scores: Optional[Tensor]) -> Tensor:
        if scores is None:
            raise ValueError(
                f'select: base="{name}" needs scores (B, N): the [CLS] attention each token receives '
                "(restore_ext.cls_attention captures it from a vision tower); got scores=None"
            )
        return selector(features, k, scores)

    return run


def _uniform(features: Tensor, k: int, scores: Optional[Tensor]) -> Tensor:
    b, n = features.shape[0], features.shape[1]
    return uniform_indices(n, k, features.device).expand(b, k).contiguous()


BASE_SELECTORS: Dict[str, Callable[[Tensor, int, Optional[Tensor]], Tensor]] = {
    "divprune": _divprune,
    "cls": _cls,
    "uniform": _uniform,
    "vispruner": _needs_scores("vispruner", vispruner_indices),
    "holov": _needs_scores("holov", holov_indices),
}


def _check_custom_output(name: str, idx, b: int, n: int, k: int, device) -> Tensor:
    if not isinstance(idx, Tensor):
        raise TypeError(f"select: base callable {name} must return a Tensor, got {type(idx).__name__}")
    if tuple(idx.shape) != (b, k):
        raise ValueError(f"select: base callable {name} must return shape (B, k) = ({b}, {k}), got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"select: base callable {name} must return int32 or int64 indices, got {idx.dtype}")
    if idx.device != device:
        raise ValueError(f"select: base callable {name} returned indices on {idx.device}, features are on {device}")
    idx = idx.long().sort(dim=1).values
    if b and k and not idx.is_meta:  # meta tensors have shapes only: nothing to read
        lo, hi = int(idx[:, 0].min()), int(idx[:, -1].max())
        if lo < 0 or hi >= n:
            raise ValueError(f"select: base callable {name} returned indices in [{lo}, {hi}], outside [0, N = {n})")
        if k > 1 and bool((idx.diff(dim=1) == 0).any()):
            raise ValueError(f"select: base callable {name} returned repeated indices within a row")
    return idx


def select(
    features: Tensor, k: int, base: Union[str, Selector] = "divprune", scores: Optional[Tensor] = None
) -> Tensor:
    """The ``k`` tokens of each row of ``features`` (B, N, D) that the base method keeps.

    ``base`` is a name of :data:`BASE_SELECTORS` (``"divprune"``, ``"cls"``, ``"vispruner"``, ``"holov"``,
    ``"uniform"``; see the module docstring for each one's exact rule) or a callable
    ``base(features, k) -> (B, k)`` indices. ``scores`` (B, N) is needed by ``"cls"``, ``"vispruner"`` and
    ``"holov"``. Returns (B, k) int64, distinct and ascending per row.
    """
    check_features("select", features)
    b, n = features.shape[0], features.shape[1]
    given, k = k, as_int(k)
    if k is None or not 1 <= k <= n:
        raise ValueError(f"select: k must be an int with 1 <= k <= N = {n}, got {given!r}")
    if callable(base):
        name = getattr(base, "__name__", repr(base))
        return _check_custom_output(name, base(features, k), b, n, k, features.device)
    if base not in BASE_SELECTORS:
        raise ValueError(f"select: base must be one of {sorted(BASE_SELECTORS)} or a callable, got {base!r}")
    return BASE_SELECTORS[base](features, k, scores)
