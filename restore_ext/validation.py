"""Argument checks shared by the Python entry points (docs/ops.md, "Errors").

One home for the rules every public function applies to its plain-number arguments, so that ``select``,
``reduce``, ``restore_reduce``, ``distance_bias_table`` and the op wrappers accept the same things and word their
errors alike: the function, the argument, what was expected, what was given.
"""
import operator
from typing import Callable, Optional

import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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


def check_op_int(op: str, name: str, value, limits: Callable[[], str]) -> None:
    """Refuses, before the dispatcher sees it, an int argument of a compiled op that the dispatcher cannot carry.

    The schema types these arguments as int64. A Python int outside int64 or a non-integer would otherwise fail
    inside the dispatcher with a message that names neither the op nor the range ("Expected a value of type
    'int' for argument 'k' but instead found type 'int'"). Everything the dispatcher takes is passed through
    untouched, so the op's own range check still decides (``limits()`` words that range for this message), and
    symbolic ints under torch.compile are not specialised. Raises RuntimeError, the type the op's own range
    check raises for the same mistake.
    """
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:  # the common case, first and cheap
        return
    if isinstance(value, (bool, torch.SymInt)):  # the dispatcher takes both (a bool as 0 / 1, as today)
        return
    v = as_int(value)
    if v is None:
        raise RuntimeError(f"{op}: {name} must be an int with {limits()}, got {type(value).__name__} {value!r}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise RuntimeError(f"{op}: {name} must satisfy {limits()}, got {name} = {v}, which is not even an int64")


def check_features(fn: str, features) -> None:
    """The (B, N, D) token features every reduction entry point takes: a 3-D tensor, or a ValueError."""
    if not isinstance(features, torch.Tensor) or features.dim() != 3:
        got = f"shape {tuple(features.shape)}" if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{fn}: features must be 3-D (B, N, D), got {got}")
