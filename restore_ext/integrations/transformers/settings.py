"""RestoreSettings: what ``apply_restore`` was asked for, checked once, before anything is installed."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from restore_ext.reduction import kept_count
from restore_ext.validation import as_int

DEFAULT_NUM_TOKENS = 64
BASES = ("divprune", "uniform")
RULES = ("reference", "dpc")


def _as_count(value):
    """value as a Python int if it is an integer (the core's rule), and for a tensor only a 0-d integer one (a
    one-element 1-D tensor or a bool tensor would pass ``operator.index``)."""
    if isinstance(value, Tensor) and (value.dim() != 0 or value.dtype == torch.bool):
        return None
    return as_int(value)


def _as_ratio(value):
    """value as a float if it is a real number (int or float, not bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class RestoreSettings:
    """The RESTORE configuration of one patched model (see ``apply_restore`` for each field's meaning)."""

    num_tokens: Optional[int] = None  # per item; 64 when neither it nor ratio is given
    base: Union[str, Callable] = "divprune"
    keep_ratio: float = 0.5
    rule: str = "reference"
    calibrate: bool = True
    decode_distance_bias: bool = False
    ratio: Optional[float] = None  # per item K = round(ratio * N), at least 2 (dynamic resolution)

    def __post_init__(self):
        if self.num_tokens is not None and self.ratio is not None:
            raise ValueError(
                f"apply_restore: give num_tokens or ratio, not both (got num_tokens={self.num_tokens!r}, "
                f"ratio={self.ratio!r})"
            )
        if self.ratio is not None:
            ratio = _as_ratio(self.ratio)
            if ratio is None or math.isnan(ratio) or not 0.0 < ratio <= 1.0:
                raise ValueError(f"apply_restore: ratio must be a number in (0, 1], got {self.ratio!r}")
            object.__setattr__(self, "ratio", ratio)
        num_tokens = DEFAULT_NUM_TOKENS if self.num_tokens is None and self.ratio is None else self.num_tokens
        if num_tokens is not None:
            num_tokens = _as_count(num_tokens)
            if num_tokens is None or num_tokens < 1:
                raise ValueError(
                    "apply_restore: num_tokens must be a positive int (or a 0-d integer tensor), got "
                    f"{self.num_tokens!r}"
                )
        keep_ratio = _as_ratio(self.keep_ratio)
        if keep_ratio is None or math.isnan(keep_ratio) or not 0.0 <= keep_ratio <= 1.0:
            raise ValueError(f"apply_restore: keep_ratio must be a number in [0, 1], got {self.keep_ratio!r}")
        if not (callable(self.base) or (isinstance(self.base, str) and self.base in BASES)):
            raise ValueError(
                f"apply_restore: base must be 'divprune', 'uniform' or a callable(features, k) -> indices, got "
                f"{self.base!r} ('cls' needs the vision tower's [CLS] attention, which this integration does not "
                "capture yet)"
            )
        if not (isinstance(self.rule, str) and self.rule in RULES):
            raise ValueError(f'apply_restore: rule must be "reference" or "dpc", got {self.rule!r}')
        for name in ("calibrate", "decode_distance_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"apply_restore: {name} must be True or False, got {getattr(self, name)!r}")
        # frozen: normalise through object.__setattr__ (a 0-d tensor becomes the int, an int ratio a float)
        object.__setattr__(self, "num_tokens", num_tokens)
        object.__setattr__(self, "keep_ratio", keep_ratio)

    def budget(self, n: int) -> int:
        """Tokens an item of ``n`` visual tokens keeps after reduction: ``num_tokens``, or ``ratio * n`` rounded half
        up and at least 2; never more than ``n`` (an item with fewer keeps all of them)."""
        if self.ratio is not None:
            return min(n, max(2, math.floor(self.ratio * n + 0.5)))
        return min(self.num_tokens, n)

    def kept(self, num_out: int) -> int:
        """Of ``num_out`` output tokens, how many the base method keeps (the rest are merged anchors)."""
        return min(num_out, kept_count(num_out, self.keep_ratio))
