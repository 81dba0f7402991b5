"""RESTORE's attention bias: the RoPE distance table (docs/ops.md §4) and the dense bias (§5) in PyTorch.

``calibrated_attention`` applies this bias inside its kernels without ever materialising it. The dense form here
is the one written-out definition that everything which needs the (B, H, Lq, Lk) matrix uses: the float64
reference, the tests' same-precision yardstick, the demo's attention probe and the benchmarks' "authors' mask"
peer.

Multi-axis (M-RoPE: Qwen2-VL, Qwen2.5-VL, Qwen3-VL) positions (docs/ops.md §4b, §5b): a token has three position
ids (t, h, w) and rotary frequency i turns with the id along one axis ``axis_of_freq[i]``. RoPE's decay between a
query and a key is then ``mean_i cos(|d_{axis(i)}| * inv_freq[i])``, a sum over the axes of each axis' share:
:func:`rope_decay_tables` tabulates those shares, (3, T), and :func:`distance_bias` reads (B, L, 3) positions
against such a table.
"""
import math
from typing import Optional, Sequence

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


NUM_AXES = 3  # t, h, w


def _section(mrope_section, fn: str) -> list:
    sec = list(mrope_section) if isinstance(mrope_section, (list, tuple)) else None
    if sec is None or len(sec) != NUM_AXES or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in sec):
        raise ValueError(f"{fn}: mrope_section must be 3 non-negative ints (t, h, w), got {mrope_section!r}")
    return sec


def mrope_axis_of_freq(mrope_section: Sequence[int], num_freqs: int, interleaved: bool) -> Tensor:
    """(num_freqs,) int64: the axis (0 = t, 1 = h, 2 = w) each rotary frequency turns with.

    ``interleaved=False`` is Qwen2-VL / Qwen2.5-VL: contiguous chunks, the first ``mrope_section[0]`` frequencies
    t, the next ``mrope_section[1]`` h, the last ``mrope_section[2]`` w (the sections must add up to
    ``num_freqs``). ``interleaved=True`` is Qwen3-VL: frequency j is h if ``j % 3 == 1 and j < 3 *
    mrope_section[1]``, w if ``j % 3 == 2 and j < 3 * mrope_section[2]``, t otherwise.
    """
    fn = "mrope_axis_of_freq"
    sec = _section(mrope_section, fn)
    if not isinstance(num_freqs, int) or isinstance(num_freqs, bool) or num_freqs < 1:
        raise ValueError(f"{fn}: num_freqs must be a positive int, got {num_freqs!r}")
    j = torch.arange(num_freqs)
    if not interleaved:
        if sum(sec) != num_freqs:
            raise ValueError(
                f"{fn}: contiguous sections {sec} must add up to num_freqs = {num_freqs} (head_dim / 2), got {sum(sec)}"
            )
        return torch.repeat_interleave(torch.arange(NUM_AXES), torch.tensor(sec))
    axis = torch.zeros(num_freqs, dtype=torch.long)
    axis[(j % 3 == 1) & (j < 3 * sec[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * sec[2])] = 2
    return axis


def rope_decay_tables(max_distance: int, inv_freq: Tensor, axis_of_freq: Tensor) -> Tensor:
    """(3, max_distance) float32, computed in float64: ``decay[s, d] = (1/F) sum_{i: axis_of_freq[i] = s}
    cos(d * inv_freq[i])`` with F = ``len(inv_freq)`` (docs/ops.md §4b).

    Summed over s it is the 1-D decay ``mean_i cos(d * inv_freq[i])``; the M-RoPE bias between a query and a
    key is ``log(2 - sum_s decay[s, min(|q_pos_s - k_pos_s|, T - 1)])``. The result lives on ``inv_freq``'s
    device.
    """
    fn = "rope_decay_tables"
    length = as_int(max_distance)
    if length is None or length < 1:
        raise ValueError(f"{fn}: max_distance must be an int >= 1, got {max_distance!r}")
    if not isinstance(inv_freq, Tensor) or inv_freq.dim() != 1 or inv_freq.numel() == 0:
        got = tuple(inv_freq.shape) if isinstance(inv_freq, Tensor) else type(inv_freq).__name__
        raise ValueError(f"{fn}: inv_freq must be a non-empty 1-D tensor, got {got}")
    if not inv_freq.is_floating_point():
        raise ValueError(f"{fn}: inv_freq must be floating point, got {inv_freq.dtype}")
    if not isinstance(axis_of_freq, Tensor) or axis_of_freq.shape != inv_freq.shape:
        got = tuple(axis_of_freq.shape) if isinstance(axis_of_freq, Tensor) else type(axis_of_freq).__name__
        raise ValueError(f"{fn}: axis_of_freq must be a tensor of inv_freq's shape {tuple(inv_freq.shape)}, got {got}")
    if axis_of_freq.is_floating_point() or axis_of_freq.is_complex() or axis_of_freq.dtype == torch.bool:
        raise ValueError(f"{fn}: axis_of_freq must be an integer tensor, got {axis_of_freq.dtype}")
    axis = axis_of_freq.to(inv_freq.device, torch.long)
    if bool(((axis < 0) | (axis >= NUM_AXES)).any()):
        raise ValueError(f"{fn}: axis_of_freq values must lie in [0, 3) (t, h, w), got {axis.tolist()}")
    dist = torch.arange(length, dtype=torch.float64, device=inv_freq.device)
    cos = torch.cos(torch.outer(dist, inv_freq.double())) / inv_freq.shape[0]  # (T, F)
    onehot = torch.nn.functional.one_hot(axis, NUM_AXES).double()  # (F, 3)
    return (cos @ onehot).t().contiguous().float()


def causal_visible(lq: int, lk: int, device=None) -> Tensor:
    """(Lq, Lk) bool: query i sees key j iff ``j <= i + Lk - Lq`` (causal aligned to the end, as FlashAttention)."""
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def distance_bias(q_pos: Tensor, k_pos: Tensor, table: Tensor) -> Tensor:
    """(B, Lq, Lk): the distance term of the bias.

    1-D positions (B, Lq), (B, Lk) with a (T,) table: ``table[clamp(q_pos[b, i] - k_pos[b, j], 0, T-1)]``; a key
    after its query (negative distance) reads table[0], a distance beyond the table its last entry, also one
    beyond int64: q_pos near INT64_MAX minus a negative k_pos wraps to a negative int64, which must not read
    table[0] as a key after its query would.
    Multi-axis positions (B, Lq, S), (B, Lk, S) with an (S, T) table of decay shares (:func:`rope_decay_tables`):
    ``log(2 - sum_s table[s, min(|q_pos[b, i, s] - k_pos[b, j, s]|, T-1)])``, summed and logged in float64 (the
    result is float64). The absolute value matters: under M-RoPE an earlier key can have a larger h or w.
    """
    if table.dim() == 1:
        return table[_saturating_distance(q_pos.long()[:, :, None], k_pos.long()[:, None, :], table.shape[0] - 1)]
    last = table.shape[1] - 1
    decay = 0
    for s in range(table.shape[0]):
        qp, kp = q_pos[..., s].long()[:, :, None], k_pos[..., s].long()[:, None, :]
        dist = _saturating_distance(qp, kp, last) + _saturating_distance(kp, qp, last)  # |qp - kp|, clamped
        decay = decay + table[s].double()[dist]
    return torch.log(2 - decay)


def _saturating_distance(a: Tensor, b: Tensor, last: int) -> Tensor:
    """clamp(a - b, 0, last) for any int64 a and b: for a > b the true difference is in [1, 2**64 - 1], so the
    int64 subtraction is negative exactly when it wrapped, and then the distance is past any table."""
    diff = a - b
    return torch.where(a <= b, 0, torch.where(diff < 0, last, diff.clamp(max=last)))


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
    (each term optional: ``log_size`` (B, Lk), and ``q_pos`` / ``k_pos`` / ``table`` together; multi-axis
    positions (B, L, S) with an (S, T) table take the §5b distance term of :func:`distance_bias`), and keys the
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
