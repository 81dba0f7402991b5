"""RESTORE's attention bias: the RoPE distance table (docs/ops.md §4) and the dense bias (§5) in PyTorch.

``calibrated_attention`` applies this bias inside its kernels without ever materialising it. The dense form here
is the one written-out definition that everything which needs the (B, H, Lq, Lk) matrix uses: the float64
reference, the tests' same-precision yardstick, the demo's attention probe and the benchmarks' "authors' mask"
peer.

Multi-axis (M-RoPE) positions are planned (docs/ops.md §4b, §5b): they add a table builder next to
:func:`distance_bias_table` and a branch of :func:`distance_bias` for (B, L, 3) positions and a (3, T) table;
:func:`dense_attention_bias` and its callers stay as they are.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from .validation import as_int


def default_inv_freq(rotary_dim: int, theta: float = 10000.0) -> Tensor:
    """Inverse frequencies of default (unscaled) RoPE: ``theta ** (-arange(0, rotary_dim, 2) / rotary_dim)``."""
    return theta ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)


def distance_bias_table(max_distance: int, inv_freq: Tensor) -> Tensor:
    """``table[d] = log(2 - mean_i cos(d * inv_freq[i]))`` for d < ``max_distance``, float32 (docs/ops.md §4).

    ``max_distance`` is an int >= 1 (a float, even 3.0, is refused rather than truncated). ``inv_freq`` is the
    model's RoPE inverse frequencies (for default RoPE ``theta ** (-arange(0, rotary_dim, 2) / rotary_dim)``).
    Computed in float64; the result lives on ``inv_freq``'s device.
    """
    length = as_int(max_distance)
    if length is None or length < 1:
        raise ValueError(f"distance_bias_table: max_distance must be an int >= 1, got {max_distance!r}")
    if not isinstance(inv_freq, Tensor) or inv_freq.dim() != 1 or inv_freq.numel() == 0:
        raise ValueError(
            f"distance_bias_table: inv_freq must be a non-empty 1-D tensor, got "
            f"{tuple(inv_freq.shape) if isinstance(inv_freq, Tensor) else type(inv_freq).__name__}"
        )
    if not inv_freq.is_floating_point():
        raise ValueError(f"distance_bias_table: inv_freq must be floating point, got {inv_freq.dtype}")
    # A NaN or inf frequency makes every entry NaN (table[0] = log(2 - cos(0 * inf))), which calibrated_attention
    # would spread over every output without an error. (One host read: this runs once per model, not per step.)
    if not inv_freq.is_meta and not bool(torch.isfinite(inv_freq).all()):
        bad = inv_freq[~torch.isfinite(inv_freq)][:3].tolist()
        raise ValueError(f"distance_bias_table: inv_freq must be finite, got non-finite values such as {bad}")
    dist = torch.arange(length, dtype=torch.float64, device=inv_freq.device)
    decay = torch.cos(torch.outer(dist, inv_freq.double())).mean(-1)
    return torch.log(2 - decay).float()


def causal_visible(lq: int, lk: int, device=None) -> Tensor:
    """(Lq, Lk) bool: query i sees key j iff ``j <= i + Lk - Lq`` (causal aligned to the end, as FlashAttention)."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def distance_bias(q_pos: Tensor, k_pos: Tensor, table: Tensor) -> Tensor:
    """(B, Lq, Lk): ``table[clamp(q_pos[b, i] - k_pos[b, j], 0, T-1)]`` for 1-D positions (B, Lq), (B, Lk).

    A key after its query (negative distance) reads table[0]; a distance beyond the table reads its last entry,
    also one beyond int64: q_pos near INT64_MAX minus a negative k_pos wraps to a negative int64, which must not
    read table[0] as a key after its query would.
    """
    qp, kp = q_pos.long()[:, :, None], k_pos.long()[:, None, :]
    last = table.shape[0] - 1
    diff = qp - kp  # for qp > kp the true difference is in [1, 2**64 - 1]; negative here iff it wrapped
    dist = torch.where(qp <= kp, 0, torch.where(diff < 0, last, diff.clamp(max=last)))
    return table[dist]


def dense_attention_bias(
    log_size: Optional[Tensor] = None,
    q_pos: Optional[Tensor] = None,
    k_pos: Optional[Tensor] = None,
    table: Optional[Tensor] = None,
    causal: bool = True,
    scores: Optional[Tensor] = None,
) -> Tensor:
    """RESTORE's attention bias as a dense matrix (docs/ops.md §5), added to ``scores`` or on its own.

    The bias of key j for query i is ``log_size[b, j] + table[clamp(q_pos[b, i] - k_pos[b, j], 0, T-1)]``
    (each term optional: ``log_size`` (B, Lk), and ``q_pos`` / ``k_pos`` / ``table`` together), and keys the
    causal mask hides (``j > i + Lk - Lq``) get -inf.

    - ``scores`` (B, H, Lq, Lk) given: returns ``scores + bias`` in scores' dtype (each term converted to it
      before it is added, as eager attention in that precision would), with hidden keys set to -inf by
      replacement, so a NaN or inf score of a hidden key cannot leak through.
    - ``scores=None``: returns the bias alone, (B, 1, Lq, Lk) float32, an additive mask for SDPA; Lq and Lk come
      from ``q_pos`` and ``k_pos``, which are then required.
    """
    given = [name for name, t in (("q_pos", q_pos), ("k_pos", k_pos), ("table", table)) if t is not None]
    if table is not None and len(given) != 3:
        raise ValueError(f"dense_attention_bias: q_pos, k_pos and table come together, got only {', '.join(given)}")
    if scores is None:
        if q_pos is None or k_pos is None:
            raise ValueError(
                "dense_attention_bias: the bias alone (scores=None) takes its shape (B, 1, Lq, Lk) from q_pos "
                "(B, Lq) and k_pos (B, Lk); pass them, or pass scores"
            )
        b, lq, lk = q_pos.shape[0], q_pos.shape[1], k_pos.shape[1]
        device, dtype = q_pos.device, torch.float32
    else:
        b, lq, lk = scores.shape[0], scores.shape[-2], scores.shape[-1]
        device, dtype = scores.device, scores.dtype
    out = scores
    if log_size is not None:
        term = log_size.to(dtype)[:, None, None, :]
        out = term if out is None else out + term
    if table is not None:
        term = distance_bias(q_pos, k_pos, table).to(dtype)[:, None]
        out = term if out is None else out + term
    if out is None:
        out = torch.zeros(b, 1, lq, lk, dtype=dtype, device=device)
    if causal:
        out = out.masked_fill(~causal_visible(lq, lk, device), -math.inf)
    return out.expand(b, out.shape[1], lq, lk)
