"""Input checks and the similarity matrix shared by the base selectors that rank tokens by a score such as
[CLS] attention (VisPruner, HoloV).

Both selectors follow their authors' code, which silently misbehaves on bad input (NaN similarities from a zero
or non-finite feature, a negative HoloV crop budget from negative attention), so every input is checked and the
error names the function, the argument, what was expected and what was given. As in :mod:`restore_ext.reduction`,
value checks never stall a CUDA stream: there they are device-side asserts (the program stops at the next sync
with the same message); on the CPU they raise ValueError. Meta tensors are checked for shapes only.
"""
import torch
from torch import Tensor

from .validation import as_int, check_features

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(features: Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (half precision would reorder near-ties)."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def require(ok: Tensor, fn: str, message: str) -> None:
    """A value check: a device-side assert on CUDA, a ValueError elsewhere."""
    if ok.is_cuda:
        torch._assert_async(ok, f"{fn}: {message}")
    elif not bool(ok):
        raise ValueError(f"{fn}: {message}")


def check_scored_inputs(fn: str, features: Tensor, k, scores: Tensor, nonnegative: bool = False,
                        values: bool = True) -> int:
    """Checks ``features`` (B, N, D), ``k`` and ``scores`` (B, N); returns ``k`` as a Python int. ``values=False``
    leaves the value checks of ``scores`` (finite, >= 0) to a compiled op that reads them anyway."""
    check_features(fn, features)
    if features.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: features must be float16, bfloat16, float32 or float64, got {features.dtype}")
    b, n, d = features.shape
    given, k = k, as_int(k)
    if k is None or not 1 <= k <= n:
        raise ValueError(f"{fn}: k must be an int with 1 <= k <= N = {n}, got {given!r}")
    if d == 0:
        raise ValueError(f"{fn}: features must have at least one channel (D >= 1), got shape {tuple(features.shape)}")
    if scores is None:
        raise ValueError(f"{fn}: needs scores (B, N): the [CLS] attention each token receives; got None")
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (b, n):
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{fn}: scores must have shape (B, N) = ({b}, {n}), got {got}")
    if scores.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: scores must be float16, bfloat16, float32 or float64, got {scores.dtype}")
    if scores.device != features.device:
        raise ValueError(f"{fn}: scores is on {scores.device} but features on {features.device}")
    if scores.is_meta or not scores.numel() or not values:
        return k
    require(torch.isfinite(scores).all(), fn, "scores must be finite, got NaN or inf")
    if nonnegative:  # attention weights; a negative one can make a crop's budget negative
        require((scores >= 0).all(), fn, "scores must be >= 0 (attention weights), got a negative score")
    return k


def cosine_gram(fn: str, x: Tensor, eps: float = 0.0) -> Tensor:
    """``(x_i . x_j) / ((|x_i| + eps) (|x_j| + eps))`` for the rows of ``x`` (..., m, D): (..., m, m) in the compute
    dtype; a zero row gives 0 against everything. Refuses NaN or inf features (``require``).

    On the CPU the product of the raw rows is scaled afterwards (m x m work instead of dividing m x D
    features). That is exact enough only while no norm is near the float range's ends (squares overflow float32
    above ~1e19 and underflow below ~1e-19), which one read of the norms tells; otherwise, and always on other
    devices (where that read would stall the stream), rows are first divided by their largest magnitude.
    """
    x = x.to(compute_dtype(x))
    norm = torch.linalg.vector_norm(x, dim=-1)
    if x.device.type == "cpu" and bool(((norm > 1e-15) & (norm < 1e15)).all()):
        inv = 1 / (norm + eps)
        return (x @ x.transpose(-1, -2)).mul_(inv[..., :, None]).mul_(inv[..., None, :])
    return prescaled_gram(fn, x, eps)


def prescaled_gram(fn: str, x: Tensor, eps: float) -> Tensor:
    """:func:`cosine_gram` for rows of any finite magnitude, without reading anything back to the host."""
    tiny = torch.finfo(x.dtype).tiny
    peak = x.abs().amax(dim=-1, keepdim=True)
    require(torch.isfinite(peak).all(), fn, "features must be finite, got NaN or inf")
    peak = peak.clamp_min(tiny)
    y = x / peak
    f = y * (peak / (torch.linalg.vector_norm(y, dim=-1, keepdim=True) * peak + eps).clamp_min(tiny))
    return f @ f.transpose(-1, -2)
