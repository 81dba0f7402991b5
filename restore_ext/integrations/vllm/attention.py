"""vLLM attention backend "RESTORE": calibrated attention over the paged KV cache, for one model's layers.

The backend is put on the language model's decoder layers by the RESTORE model class itself
(:func:`use_restore_attention`), so other models in the process, the vision tower and every other layer keep
vLLM's own backends. The KV cache pages keep vLLM's logical shape (blocks, kv heads, block slots, 2 * head_size):
this backend owns their interior (K in the first head_size channels of a slot, V in the rest), and the per-key
RESTORE state beside it, one :class:`~.paged_batch.SlotState` per model, written by the model once a step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch

from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.utils import extract_layer_index
from vllm.v1.attention.backend import (
    AttentionBackend,
    AttentionImpl,
    AttentionMetadataBuilder,
    AttentionType,
    CommonAttentionMetadata,
    MultipleOf,
)
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.kv_cache_layout import KVCacheLayout

from .paged_batch import GroupBias, PaddedRows, attend, split_and_pad, write_kv

BACKEND_NAME = "RESTORE"
_WHO = "restore_ext.integrations.vllm"


@dataclass
class StepBias:
    """One step's bias for every layer: per padded batch, and the distance table (None: no query uses it)."""

    groups: list[GroupBias]
    table: Optional[torch.Tensor]


@dataclass
class RestoreAttentionMetadata:
    num_actual_tokens: int
    block_size: int
    slot_mapping: torch.Tensor
    rows: list[PaddedRows]
    step: Optional[StepBias] = field(default=None)  # set by the model's forward before its first layer


class RestoreAttentionMetadataBuilder(AttentionMetadataBuilder[RestoreAttentionMetadata]):
    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.block_size = kv_cache_spec.block_size

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> RestoreAttentionMetadata:
        cm = common_attn_metadata
        rows = split_and_pad(cm.query_start_loc_cpu, cm.seq_lens, cm.block_table_tensor, self.block_size,
                             cm.num_actual_tokens)
        return RestoreAttentionMetadata(cm.num_actual_tokens, self.block_size, cm.slot_mapping, rows)


class RestoreAttentionBackend(AttentionBackend):
    forward_includes_kv_cache_update: bool = False
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list] = ["auto"]

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None):
        return [MultipleOf(1)]

    @staticmethod
    def get_name() -> str:
        return BACKEND_NAME

    @staticmethod
    def get_impl_cls():
        return RestoreAttentionImpl

    @staticmethod
    def get_builder_cls():
        return RestoreAttentionMetadataBuilder

    @classmethod
    def supported_kv_cache_layouts(cls):
        # Slots are addressed through the logical (block, head, slot, channel) view, so any physical order works;
        # heads-inner keeps one slot's K/V together for the gather.
        return (KVCacheLayout.LBNHC, KVCacheLayout.LBHNC)


class RestoreAttentionImpl(AttentionImpl):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: Optional[int] = None,
                 alibi_slopes=None, sliding_window=None, kv_cache_dtype: str = "auto", logits_soft_cap=None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name=None,
                 layer_idx: int = 1, **extra) -> None:
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.attn_type = attn_type
        self.kv_sharing_target_layer_name = kv_sharing_target_layer_name
        self.layer_idx = layer_idx

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        write_kv(kv_cache, slot_mapping, key, value)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):
        if attn_metadata is None:  # profiling and warm-up runs
            return output
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError(f"{_WHO}: fused output quantization is not supported")
        step = attn_metadata.step
        if step is None:
            raise RuntimeError(
                f"{_WHO}: layer {self.layer_idx} ran without this step's RESTORE state; the RESTORE model class "
                "sets it in its forward before the language model runs"
            )
        if kv_cache.shape[2] != attn_metadata.block_size:
            raise RuntimeError(f"{_WHO}: KV cache blocks of {kv_cache.shape[2]} slots, block table of "
                               f"{attn_metadata.block_size}")
        n = attn_metadata.num_actual_tokens
        attend(query[:n], kv_cache, step.groups, step.table, self.layer_idx == 0, self.scale, output)
        return output


def use_restore_attention(language_model: torch.nn.Module) -> list[Attention]:
    """Moves every decoder self-attention layer of ``language_model`` onto the RESTORE backend (in place).
    Refuses what the backend does not compute (sliding window, ALiBi, sinks, soft-capping, quantized KV cache,
    KV sharing) rather than dropping it."""
    if BACKEND_NAME not in AttentionBackendEnum._member_map_:
        raise RuntimeError(f"{_WHO}: the RESTORE attention backend is not registered (the vLLM plugin 'restore' "
                           "did not run register(); check VLLM_PLUGINS)")
    layers = [m for m in language_model.modules() if isinstance(m, Attention)]
    if not layers:
        raise ValueError(f"{_WHO}: {type(language_model).__name__} has no vLLM Attention layers to calibrate")
    for layer in layers:
        impl = layer.impl
        problems = []
        if layer.attn_type != AttentionType.DECODER:
            problems.append(f"attention type {layer.attn_type}")
        if layer.sliding_window is not None:
            problems.append(f"sliding window {layer.sliding_window}")
        if getattr(impl, "alibi_slopes", None) is not None:
            problems.append("ALiBi")
        if getattr(layer, "has_sink", False):
            problems.append("attention sinks")
        if getattr(impl, "logits_soft_cap", None):
            problems.append("logit soft-capping")
        if layer.kv_cache_dtype != "auto":
            problems.append(f"kv_cache_dtype={layer.kv_cache_dtype!r}")
        if layer.kv_sharing_target_layer_name is not None:
            problems.append("KV sharing across layers")
        if problems:
            raise ValueError(f"{_WHO}: layer {layer.layer_name} uses {', '.join(problems)}, which RESTORE's "
                             "calibrated attention does not support")
        layer.attn_backend = RestoreAttentionBackend
        layer.backend = AttentionBackendEnum[BACKEND_NAME]
        layer.impl = RestoreAttentionImpl(layer.num_heads, layer.head_size, impl.scale, layer.num_kv_heads,
                                          layer_idx=extract_layer_index(layer.layer_name))
    return layers
