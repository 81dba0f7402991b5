"""Typed, documented entry points of the compiled ops, and their fake kernels for torch.compile.

Every function here calls ``torch.ops.restore.<op>``; docs/ops.md is the contract and
:mod:`restore_ext.reference` the float64 reference each one is tested against. The wrappers check only what
the dispatcher cannot carry (an int argument outside int64, or not an integer at all, see
:func:`restore_ext.validation.check_op_int`); the ops check everything else themselves.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .validation import check_op_int


class AnchorMerge(NamedTuple):
    merged: Tensor  # (B, K, D), dtype of x: plain mean of each slot's tokens
    size: Tensor  # (B, K) int64: tokens per slot, anchor included
    assign: Tensor  # (B, N) int64 in [0, K): slot of each token
    anchors: Tensor  # (B, K) int64: anchor token indices, ascending


def _n_of(t, rank: int) -> str:
    """The " = N" of an error message, when ``t`` has the rank that tells N (else the op's own check speaks)."""
    return f" = {t.shape[1]}" if isinstance(t, Tensor) and t.dim() == rank else ""


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest ``scores`` per row, in ascending index order (docs/ops.md §1).

    ``scores`` (B, N) float16/bfloat16/float32, ``1 <= k <= N``. Ties go to the lower index; NaN ranks
    below every number. Returns (B, k) int64.
    """
    check_op_int("topk_indices", "k", k, lambda: f"1 <= k <= N{_n_of(scores, 2)}")
    return torch.ops.restore.topk_indices.default(scores, k)


def divprune_indices(x: Tensor, k: int) -> Tensor:
    """DivPrune's ``k`` most diverse tokens of each row of ``x`` (B, N, D), in ascending index order.

    DivPrune (Alvar et al., CVPR 2025) solves max-min diversity greedily on the cosine distance
    ``1 - cos(x_i, x_j)``: first the token whose nearest other token is farthest, then repeatedly the token
    farthest from the chosen set; ties go to the lower index. ``x`` float16/bfloat16/float32,
    ``1 <= k <= N``. Returns (B, k) int64. Memory O(N * D) per row (no N x N matrix). Contract:
    docs/ops.md §1b; reference :func:`restore_ext.reference.divprune_indices`.
    """
    check_op_int("divprune_indices", "k", k, lambda: f"1 <= k <= N{_n_of(x, 3)}")
    return torch.ops.restore.divprune_indices.default(x, k)


def vispruner_matching(sim: Tensor, keep: int) -> Tensor:
    """VisPruner's duplicate-removal rounds on the similarities ``sim`` (B, R, R) of the residual tokens, in
    their initial order, until ``keep`` remain; returns the surviving rows, (B, keep) int64 ascending.

    Each round: A = even positions, B = odd positions of the current order; each A token's score is its highest
    similarity to a B token; the ``min(8, excess)`` highest-scoring A tokens are dropped and the next order is
    the kept A tokens by descending score (ties: earlier position first), then B. ``sim`` float32 or float64,
    finite; ``1 <= keep <= R``. CPU only (:func:`restore_ext.vispruner.vispruner_indices` runs the same rounds
    as torch ops on other devices). Contract: docs/ops.md §3c; reference
    :func:`restore_ext.reference.vispruner_matching`.
    """
    check_op_int("vispruner_matching", "keep", keep, lambda: f"1 <= keep <= R{_n_of(sim, 3)}")
    return torch.ops.restore.vispruner_matching.default(sim, keep)


def holov_crop_variance(x: Tensor) -> Tensor:
    """HoloV's similarity statistic of each crop: for crops ``x`` (B, C, m, D) of m >= 2 tokens, (B, C) float64,
    the mean over a crop's tokens of the variance of their cosine similarities to its tokens (the diagonal read
    as 0, as the authors sum it). The only step of HoloV's crop score that needs the crop's m x m matrix: the
    score is ``1e3 mean(a) (1 + 0.09 V / (V + 1e-6))`` for attention ``a >= 0``.

    ``x`` float32 or float64 (similarities in that dtype, sums in float64), finite. CPU only
    (:func:`restore_ext.holov.holov_indices` computes the same with torch ops on other devices). Contract:
    docs/ops.md §3d; reference :func:`restore_ext.reference.holov_crop_variance`.
    """
    return torch.ops.restore.holov_crop_variance.default(x)


def holov_crop_variance_bounds(x: Tensor) -> Tensor:
    """An interval around :func:`holov_crop_variance` from each crop's bfloat16 Gram matrix: (B, C, 2) float64,
    ``[..., 0] <= V <= [..., 1]`` for the float64 V of the reference, whatever order the float32 accumulation
    takes (a proof from norms computed alongside, not an estimate). What ``holov_indices(gram="bf16")`` decides
    budgets with. Same inputs and errors as :func:`holov_crop_variance`; CPU only. Contract: docs/ops.md §3d.
    """
    return torch.ops.restore.holov_crop_variance_bounds.default(x)


def holov_indices(features: Tensor, k: int, cls_attention: Tensor, gram: str = "auto") -> Tensor:
    """HoloV's ``k`` tokens of each row of ``features`` (B, N, D) given ``cls_attention`` (B, N) >= 0: (B, k)
    int64, ascending; the whole selection (crop variances, scores, the authors' budget loop, the in-crop choice)
    in one call.

    ``features`` float32 or float64 (similarities in that dtype, scores in float64), ``cls_attention`` any float
    dtype, finite and >= 0; ``1 <= k <= N``. ``gram``: ``"exact"`` computes every crop's Gram matrix in the
    features' dtype; ``"bf16"`` decides the budgets from bfloat16 Gram matrices with proven error bounds where
    those fix every decision, exactly elsewhere (same tokens; faster on AMX from ~80-token crops);
    ``"auto"`` is ``"bf16"`` for float32 features with N >= 1265 on a CPU with AMX-BF16, else
    ``"exact"``. CPU only (:func:`restore_ext.holov.holov_indices` takes every device and dtype and calls this
    on the CPU). Contract: docs/ops.md §3d; reference :func:`restore_ext.reference.holov_indices`.
    """
    check_op_int("holov_indices", "k", k, lambda: f"1 <= k <= N{_n_of(features, 3)}")
    return torch.ops.restore.holov_indices.default(features, k, cls_attention, gram)


def anchor_merge(x: Tensor, num_anchors: int, rule: str = "reference") -> AnchorMerge:
    """Distinctive anchor merging of each row of ``x`` (B, N, D) into ``num_anchors`` tokens (docs/ops.md §2).

    ``rule="reference"`` reproduces the authors' released code, ``"dpc"`` is textbook density-peak
    clustering. Returns ``AnchorMerge(merged, size, assign, anchors)``.
    """
    check_op_int("anchor_merge", "num_anchors", num_anchors, lambda: f"1 <= K <= N{_n_of(x, 3)}")
    return AnchorMerge(*torch.ops.restore.anchor_merge.default(x, num_anchors, rule))


def calibrated_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_size: Optional[Tensor] = None,
    q_pos: Optional[Tensor] = None,
    k_pos: Optional[Tensor] = None,
    table: Optional[Tensor] = None,
    causal: bool = True,
    scale: Optional[float] = None,
) -> Tensor:
    """Attention with RESTORE's calibration bias, fused (docs/ops.md §5).

    ``q`` (B, Lq, H, Dh), ``k``/``v`` (B, Lk, Hkv, Dh), one dtype of float16/bfloat16/float32, last dim
    contiguous. ``logit = scale * q.k + log_size[b, j] + table[clamp(q_pos - k_pos, 0, T-1)]``; ``log_size``
    (B, Lk) float32 (``-inf`` masks a key); ``q_pos`` (B, Lq), ``k_pos`` (B, Lk) int32/int64 and ``table``
    (T,) float32 come together. ``causal`` aligns to the end as FlashAttention. Queries that see no key
    output zeros. Returns (B, Lq, H, Dh) in q's dtype, contiguous.
    """
    return torch.ops.restore.calibrated_attention.default(q, k, v, log_size, q_pos, k_pos, table, causal, scale)


def _index_selection_fake(op, t_name, t, shape_text, k_name, k, n_text):
    """The fake of an op that picks ``k`` of the ``t.shape[1]`` rows of ``t`` per batch row: (B, k) int64."""
    dims = shape_text.count(",") + 1
    torch._check(t.dim() == dims, lambda: f"{op}: {t_name} must be {dims}-D {shape_text}, got {t.dim()}-D")
    torch._check(1 <= k, lambda: f"{op}: {k_name} must be >= 1, got {k}")
    torch._check(k <= t.shape[1], lambda: f"{op}: {k_name} must be <= {n_text} = {t.shape[1]}, got {k}")
    return t.new_empty((t.shape[0], k), dtype=torch.long)


@torch.library.register_fake("restore::topk_indices")
def _topk_indices_fake(scores, k):
    return _index_selection_fake("topk_indices", "scores", scores, "(B, N)", "k", k, "N")


@torch.library.register_fake("restore::divprune_indices")
def _divprune_indices_fake(x, k):
    return _index_selection_fake("divprune_indices", "x", x, "(B, N, D)", "k", k, "N")


@torch.library.register_fake("restore::vispruner_matching")
def _vispruner_matching_fake(sim, keep):
    return _index_selection_fake("vispruner_matching", "sim", sim, "(B, R, R)", "keep", keep, "R")


@torch.library.register_fake("restore::holov_crop_variance")
def _holov_crop_variance_fake(x):
    torch._check(x.dim() == 4, lambda: f"holov_crop_variance: x must be 4-D (B, C, m, D), got {x.dim()}-D")
    torch._check(x.shape[2] >= 2, lambda: f"holov_crop_variance: each crop needs m >= 2 tokens, got {x.shape[2]}")
    return x.new_empty(x.shape[:2], dtype=torch.float64)


@torch.library.register_fake("restore::holov_crop_variance_bounds")
def _holov_crop_variance_bounds_fake(x):
    torch._check(x.dim() == 4, lambda: f"holov_crop_variance_bounds: x must be 4-D (B, C, m, D), got {x.dim()}-D")
    torch._check(x.shape[2] >= 2,
                 lambda: f"holov_crop_variance_bounds: each crop needs m >= 2 tokens, got {x.shape[2]}")
    return x.new_empty((*x.shape[:2], 2), dtype=torch.float64)


@torch.library.register_fake("restore::holov_indices")
def _holov_indices_fake(features, k, cls_attention, gram="auto"):
    torch._check(features.dim() == 3, lambda: f"holov_indices: features must be 3-D (B, N, D), got {features.dim()}-D")
    torch._check(1 <= k, lambda: f"holov_indices: k must be >= 1, got {k}")
    torch._check(k <= features.shape[1], lambda: f"holov_indices: k must be <= N = {features.shape[1]}")
    return features.new_empty((features.shape[0], k), dtype=torch.long)


@torch.library.register_fake("restore::anchor_merge")
def _anchor_merge_fake(x, num_anchors, rule="reference"):
    torch._check(x.dim() == 3, lambda: f"anchor_merge: x must be 3-D (B, N, D), got {x.dim()}-D")
    torch._check(1 <= num_anchors, lambda: f"anchor_merge: num_anchors must be >= 1, got {num_anchors}")
    torch._check(num_anchors <= x.shape[1], lambda: f"anchor_merge: num_anchors must be <= N = {x.shape[1]}")
    b, n, d = x.shape
    return (
        x.new_empty((b, num_anchors, d)),
        x.new_empty((b, num_anchors), dtype=torch.long),
        x.new_empty((b, n), dtype=torch.long),
        x.new_empty((b, num_anchors), dtype=torch.long),
    )


@torch.library.register_fake("restore::calibrated_attention")
def _calibrated_attention_fake(q, k, v, log_size, q_pos, k_pos, table, causal=True, scale=None):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "calibrated_attention: q, k, v must be 4-D")
    torch._check(q.shape[2] % k.shape[2] == 0, lambda: "calibrated_attention: k's heads must divide q's heads")
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _inference_only(name):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"restore::{name} has no backward: restore_ext's ops are inference-only (RESTORE is applied at "
            "inference time). Run it under torch.no_grad() / torch.inference_mode(), or on detached tensors."
        )

    return backward


# Without an autograd kernel, backprop through these ops would silently yield no gradient (PyTorch only
# warns); a clear error is the honest answer. topk_indices and divprune_indices return integers only.
for _name in ("calibrated_attention", "anchor_merge"):
    torch.library.register_autograd(f"restore::{_name}", _inference_only(_name))
