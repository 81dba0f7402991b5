"""The model-family-independent part of a RESTORE model in vLLM: refusing what it cannot run, the per-token data
of a step, the per-slot key state and the bias every layer reads.

A step's per-token data comes from two places, both vLLM's own:
- the position rows the runner hands ``forward`` (base positions, and the distance-table flag, see
  :mod:`.position_rows`), known when the request was added;
- what the reduction found (each reduced token's offset from its image's first position and its size), known
  only after the vision tower ran. ``embed_multimodal`` records it beside each output it returns
  (:class:`~.encoder_records.EncoderRecords`); ``embed_input_ids`` receives slices of those cached outputs for the
  step's tokens and turns them into per-token arrays, which ``forward`` consumes right after (the runner calls
  the two back to back on the same worker, once per step).

With pipeline parallelism only the first stage embeds; it sends the step's per-token data to the next stages with
the hidden states, as extra entries of vLLM's IntermediateTensors (:data:`CARRIED`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import restore_ext
from restore_ext.attention_bias import mrope_axis_of_freq, rope_decay_tables
from vllm.forward_context import get_forward_context, is_forward_context_available

from .attention import BACKEND_NAME, RestoreAttentionMetadata, StepBias, use_restore_attention
from .encoder_records import EncoderRecords
from .paged_batch import SlotState, group_bias
from .position_rows import TABLE, decode_rows
from .settings import MROPE_SWITCH, RestoreSettings

_WHO = "restore_ext.integrations.vllm"
SUPPORTED_TEXT_MODELS = ("llama", "mistral", "qwen2", "qwen2_5_vl_text")
# IntermediateTensors entries that carry a step's per-token data from one pipeline stage to the next
CARRIED = ("restore_pos", "restore_log_size", "restore_log_size_first")


def refuse_unsupported(vllm_config) -> None:
    """Raises ValueError naming each engine feature RESTORE cannot run with yet."""
    par = vllm_config.parallel_config
    model = vllm_config.model_config
    problems = []
    if vllm_config.speculative_config is not None:
        problems.append("speculative decoding (draft tokens are verified against keys whose RESTORE state the "
                        "drafter does not produce)")
    if par.decode_context_parallel_size > 1 or par.prefill_context_parallel_size > 1:
        problems.append("context parallelism")
    if vllm_config.kv_transfer_config is not None:
        problems.append("KV cache transfer (the RESTORE backend's cache layout and per-slot key state are local)")
    if vllm_config.ec_transfer_config is not None:
        problems.append("encoder cache transfer (reduced encoder outputs carry per-token state made locally)")
    if vllm_config.cache_config.cache_dtype != "auto":
        problems.append(f"kv_cache_dtype={vllm_config.cache_config.cache_dtype!r}")
    if vllm_config.compilation_config.cudagraph_mm_encoder:
        problems.append("cudagraph_mm_encoder (the captured encoder path skips the model's embed_multimodal, where "
                        "RESTORE reduces)")
    if model.use_mla:
        problems.append("MLA attention")
    if not model.uses_mrope:
        problems.append(f"a config without {list(MROPE_SWITCH)[0]} (vLLM's per-request positions); build the "
                        "overrides with restore_ext.integrations.vllm.hf_overrides()")
    if torch.device(vllm_config.device_config.device).type != "cpu" and not model.enforce_eager:
        problems.append("CUDA graphs / torch.compile on a GPU (not run yet): pass enforce_eager=True")
    if problems:
        raise ValueError(f"{_WHO}: RESTORE cannot run with " + "; ".join(problems))


def text_rope(text_config, pos_rows: int) -> tuple[Tensor, Optional[Tensor]]:
    """(inv_freq, axis_of_freq) of the language model's RoPE: only unscaled RoPE, whose table does not change with
    length. axis_of_freq is None for 1-D RoPE (pos_rows 1), else the M-RoPE axis (0 = t, 1 = h, 2 = w) each
    frequency turns with: ``mrope_section`` in contiguous chunks, as vLLM's MRotaryEmbedding lays it out."""
    mt = getattr(text_config, "model_type", None)
    if mt not in SUPPORTED_TEXT_MODELS:
        raise ValueError(f"{_WHO}: language model {mt!r} is not supported; supported: {SUPPORTED_TEXT_MODELS}")
    rope = getattr(text_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"{_WHO}: rope_type {rope_type!r} is not supported yet (only default RoPE)")
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    inv_freq = restore_ext.default_inv_freq(rotary_dim, float(rope.get("rope_theta", 10000.0)))
    if pos_rows == 1:
        return inv_freq, None
    section = rope.get("mrope_section")
    if rope.get("mrope_interleaved", False) or section is None or len(section) != pos_rows:
        raise ValueError(f"{_WHO}: M-RoPE needs {pos_rows} mrope_section chunks (not interleaved), got "
                         f"mrope_section={section!r}, mrope_interleaved={rope.get('mrope_interleaved', False)}")
    if sum(section) != inv_freq.shape[0]:
        raise ValueError(f"{_WHO}: mrope_section {list(section)} does not add up to the {inv_freq.shape[0]} rotary "
                         "frequencies")
    return inv_freq, mrope_axis_of_freq(list(section), inv_freq.shape[0], interleaved=False)


@dataclass
class StepTokens:
    """Per-token RESTORE data of one step's scheduled tokens (what the reduction found)."""

    offset: Tensor  # (T, P) int64: reduced token's position offset from its image's first position; 0 elsewhere
    log_size: Tensor  # (T,) float32: log(size) for layers >= 1 (0 for text)
    log_size_first: Tensor  # (T,) float32: layer 0's log(size): log(N / K) for visual tokens

    @classmethod
    def text(cls, num_tokens: int, pos_rows: int, device) -> "StepTokens":
        z = torch.zeros(num_tokens, dtype=torch.float32, device=device)
        return cls(torch.zeros(num_tokens, pos_rows, dtype=torch.int64, device=device), z, z.clone())

    def padded(self, num_tokens: int) -> "StepTokens":
        extra = num_tokens - self.offset.shape[0]
        if extra < 0:
            raise RuntimeError(f"{_WHO}: {self.offset.shape[0]} embedded tokens but forward got {num_tokens}")
        if extra == 0:
            return self
        pad = StepTokens.text(extra, self.offset.shape[1], self.offset.device)
        return StepTokens(torch.cat([self.offset, pad.offset]), torch.cat([self.log_size, pad.log_size]),
                          torch.cat([self.log_size_first, pad.log_size_first]))


class RestoreRuntime:
    """Everything a RESTORE model adds at run time. pos_rows: position rows the language model reads (1: 1-D)."""

    def __init__(self, vllm_config, settings: RestoreSettings, language_model: torch.nn.Module, pos_rows: int = 1):
        refuse_unsupported(vllm_config)
        self.settings = settings
        self.pos_rows = pos_rows
        self.inv_freq, self.axis_of_freq = text_rope(vllm_config.model_config.hf_text_config, pos_rows)
        self.layers = use_restore_attention(language_model)
        self.records = EncoderRecords()
        self.pending: Optional[StepTokens] = None
        self.state: Optional[SlotState] = None
        self._table: Optional[Tensor] = None

    # ---- encoder side ------------------------------------------------------------------------------------------
    def record(self, output: Tensor, offset: Tensor, size: Tensor, full: int) -> Tensor:
        """Registers one image's reduced tokens (K, D) with offsets (K, P) and sizes (K,); returns the output."""
        k = output.shape[0]
        if not self.settings.calibrate:  # plain attention over the shortened prompt
            zero = torch.zeros(k, dtype=torch.float32, device=output.device)
            self.records.add(output, offset.to(torch.int64), zero, zero.clone())
            return output
        log_size_first = torch.full((k,), math.log(full / k), dtype=torch.float32, device=output.device)
        self.records.add(output, offset.to(torch.int64), size.float().log(), log_size_first)
        return output

    def prompt_flags(self, length: int, reduced: bool) -> Tensor:
        """(length,) flags of a prompt's position rows: its tokens add the distance table when it holds a reduced
        item and calibration is on."""
        return torch.full((length,), TABLE if reduced and self.settings.calibrate else 0, dtype=torch.int64)

    def embed_step(self, num_tokens: int, pieces, is_multimodal: Optional[Tensor], device) -> None:
        """Called from embed_input_ids with the step's multimodal slices: stores the step's per-token data."""
        step = StepTokens.text(num_tokens, self.pos_rows, device)
        if pieces is not None and len(pieces) > 0:
            offset, log_size, log_size_first = self.records.lookup_all(pieces)
            mask = is_multimodal[:num_tokens].to(device)
            step.offset[mask], step.log_size[mask], step.log_size_first[mask] = offset, log_size, log_size_first
        self.pending = step

    # ---- per step ----------------------------------------------------------------------------------------------
    def begin_step(self, positions: Tensor, intermediate=None) -> tuple[Tensor, Tensor, Tensor]:
        """positions (R, T) rows from the runner -> (T, P) original positions for the language model and the
        step's log sizes; writes the step's tokens into the slot state and hands every layer the step's bias.
        intermediate: what the previous pipeline stage sent (None on the first stage)."""
        rows, flags = decode_rows(positions)
        num_tokens = rows.shape[1]
        if intermediate is not None:
            pos, log_size, log_size_first = (intermediate[k][:num_tokens] for k in CARRIED)
        else:
            step = self.pending.padded(num_tokens) if self.pending is not None else StepTokens.text(
                num_tokens, self.pos_rows, rows.device)
            # contiguous: (T, P) from transposed rows, and pipeline stages send only contiguous tensors
            pos = (rows[: self.pos_rows].T + step.offset).contiguous()
            log_size, log_size_first = step.log_size, step.log_size_first
        self.pending = None
        self._attach(pos, log_size, log_size_first, flags)
        return pos, log_size, log_size_first

    def make_empty_intermediate_tensors(self, language_model_factory):
        """Wraps the language model's factory: the receive buffers of a later stage also hold CARRIED."""

        def make(batch_size: int, dtype: torch.dtype, device):
            it = language_model_factory(batch_size, dtype, device)
            it["restore_pos"] = torch.zeros(batch_size, self.pos_rows, dtype=torch.int64, device=device)
            it["restore_log_size"] = torch.zeros(batch_size, dtype=torch.float32, device=device)
            it["restore_log_size_first"] = torch.zeros(batch_size, dtype=torch.float32, device=device)
            return it

        return make

    def _attach(self, pos: Tensor, log_size: Tensor, log_size_first: Tensor, flags: Tensor) -> None:
        meta = self._metadata()
        if meta is not None:
            state = self._slot_state(pos.device)
            n = meta.num_actual_tokens
            state.write(meta.slot_mapping[:n], pos[:n], log_size[:n], log_size_first[:n])
            q_table = (flags[:n] & TABLE) != 0
            want = bool(q_table.any())
            table = self.table(state.max_pos + 1, pos.device) if want else None
            meta.step = StepBias([group_bias(r, state, pos[:n], q_table, want) for r in meta.rows], table)

    def table(self, length: int, device) -> Tensor:
        """The distance table covering distances < length (grown in powers of two): (T,) for 1-D RoPE, the
        per-axis decay shares (P, T) for M-RoPE (docs/ops.md §4b, §5b)."""
        if self._table is None or self._table.shape[-1] < length or self._table.device != torch.device(device):
            size = 1 << max(10, (length - 1).bit_length())
            inv_freq = self.inv_freq.to(device)
            if self.axis_of_freq is None:
                self._table = restore_ext.distance_bias_table(size, inv_freq)
            else:
                self._table = rope_decay_tables(size, inv_freq, self.axis_of_freq.to(device))
        return self._table

    def _metadata(self) -> Optional[RestoreAttentionMetadata]:
        if not is_forward_context_available():
            return None
        md = get_forward_context().attn_metadata
        if not md:  # profiling and dummy runs carry no metadata
            return None
        if not isinstance(md, dict):
            raise RuntimeError(f"{_WHO}: micro-batched attention metadata is not supported")
        meta = md.get(self.layers[0].layer_name)
        if meta is not None and not isinstance(meta, RestoreAttentionMetadata):
            raise RuntimeError(f"{_WHO}: layer {self.layers[0].layer_name} got {type(meta).__name__}, not the "
                               f"{BACKEND_NAME} backend's metadata")
        return meta

    def _slot_state(self, device) -> SlotState:
        kv = self.layers[0].kv_cache
        num_slots = kv.shape[0] * kv.shape[2]
        if self.state is None or self.state.num_slots != num_slots:
            self.state = SlotState(num_slots, self.pos_rows, device)
        return self.state
