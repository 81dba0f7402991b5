"""Argument checks shared by the Python entry points (docs/ops.md, "Errors").

One home for the rules every public function applies to its plain-number arguments, so that ``select``,
``reduce``, ``restore_reduce``, ``distance_bias_table`` and the op wrappers accept the same things and word their
errors alike: the function, the argument, what was expected, what was given.
"""
import operator
from typing import Optional

import torch

def as_int(value) -> Optional[int]:
    """``value`` as a Python int if it is an integer (int, numpy integer, 0-d integer tensor; not bool), else None.

    Floats are refused even when integral (8.0): a count given as a float is usually a computed ratio that was
    meant to be rounded, and truncating it silently would hide that.
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_features(fn: str, features) -> None:
    """The (B, N, D) token features every reduction entry point takes: a 3-D tensor, or a ValueError."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        got = f"shape {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{fn}: features must be 3-D (B, N, D), got {got}")
