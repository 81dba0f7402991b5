"""RESTORE's attention function, registered in transformers' ``AttentionInterface`` as ``"restore"`` (the same
shape of function as transformers' integrations/sdpa_attention.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from transformers import AttentionInterface

import restore_ext

from .state import RestoreState

ATTN_IMPLEMENTATION = "restore"


def restore_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
):
    """query (B, H, Lq, Dh), key/value (B, Hkv, Lk, Dh) with the cache included -> ((B, Lq, H, Dh), None).

    The padding and causal masks come from the ``restore_state`` (-inf log(size) on padding keys, causal by token
    order), so ``attention_mask`` is not read."""
    state: Optional[RestoreState] = kwargs.get("restore_state")
    name = type(module).__name__
    if state is None:
        raise RuntimeError(
            f"restore attention ({name}) was called without a restore_state: the language model must be run through "
            "the RESTORE-patched multimodal model (model(...) or model.generate(...)); call remove_restore(model) to "
            "use it otherwise"
        )
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"restore attention: {name} uses a sliding window, which RESTORE does not support")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(f"restore attention: {name} uses logit soft-capping or attention sinks, not supported")
    if dropout > 0.0 and module.training:
        raise ValueError("restore attention: attention dropout in training mode is not supported (call model.eval())")
    if not getattr(module, "is_causal", True):
        raise ValueError(f"restore attention: {name} is not causal; RESTORE supports causal decoders only")
    b, _, lq, _ = query.shape
    lk = key.shape[2]
    layer = getattr(module, "layer_idx", 1)
    if lk != state.num_keys or lq != state.num_queries or b != state.k_pos.shape[0]:
        raise RuntimeError(
            f"restore attention: layer {layer} got {lq} queries over {lk} keys (batch {b}) but the RESTORE state "
            f"describes {state.num_queries} over {state.num_keys} (batch {state.k_pos.shape[0]}); the KV cache was "
            "changed outside RESTORE (only dynamic caches grown by the patched model are supported)"
        )
    log_size, q_pos, k_pos, table = state.attention_bias_args(layer)
    out = restore_ext.calibrated_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), log_size, q_pos, k_pos, table,
        causal=True, scale=scaling,
    )
    state.layers_run.add(layer)
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, restore_attention_forward)
