"""restore_ext: RESTORE visual token reduction for multimodal LLMs as PyTorch ops.

Importing the package registers ``torch.ops.restore.*`` (CPU kernels always, CUDA kernels when built with
CUDA). The contract of every op is docs/ops.md; :mod:`restore_ext.reference` is its executable float64 form.

Modules: ``ops`` (the compiled ops' typed wrappers), ``selectors`` (base methods: which tokens to keep),
``reduction`` (``restore_reduce``, ``reduce``), ``attention_bias`` (the RoPE distance table and the dense bias),
``reference`` (float64 references), ``validation`` (the argument checks they share), ``integrations``.
"""
import torch

from ._loader import load_library

load_library()

from . import ops  # noqa: E402  (registers the fake kernels)
from .ops import anchor_merge, calibrated_attention, divprune_indices, topk_indices  # noqa: E402
from .attention_bias import default_inv_freq, distance_bias_table, rope_decay_tables  # noqa: E402
from .selectors import BASE_SELECTORS, select  # noqa: E402
from .reduction import Reduced, reduce, restore_reduce  # noqa: E402

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
    "rope_decay_tables",
    "select",
    "topk_indices",
]
