"""restore_ext: RESTORE visual token reduction for multimodal LLMs as PyTorch ops.

Importing the package registers ``torch.ops.restore.*`` (CPU kernels always, CUDA kernels when built with
CUDA). The contract of every op is SPEC.md; :mod:`restore_ext.reference` is its executable float64 form.
"""
import torch

from ._loader import load_library

load_library()

from . import ops  # noqa: E402  (registers the fake kernels)
from .ops import anchor_merge, calibrated_attention, divprune_indices, topk_indices  # noqa: E402
from .reduction import Reduced, default_inv_freq, distance_bias_table, restore_reduce  # noqa: E402
from .select import BASE_SELECTORS, select  # noqa: E402
from .reduce_api import reduce  # noqa: E402

from .version import __version__  # noqa: E402

__all__ = [
    "BASE_SELECTORS",
    "Reduced",
    "anchor_merge",
    "calibrated_attention",
    "default_inv_freq",
    "distance_bias_table",
    "divprune_indices",
    "reduce",
    "restore_reduce",
    "select",
    "topk_indices",
]
