"""Qwen2.5-VL (native M-RoPE) with RESTORE in vLLM: images; videos are refused.

Registered by the plugin under vLLM's own architecture name, ``Qwen2_5_VLForConditionalGeneration``. Without the
``restore`` entry in the HF config every method below hands straight over to vLLM's class.

With it, the prompt gets K = min(num_tokens, N) placeholder tokens per image (N: the image's tokens after the 2 x 2
merger). ``embed_multimodal`` reduces each image's N merger outputs to K with :func:`restore_ext.reduce` and
records, per output, its representative's (t, h, w) offset in the image's grid (the retained token itself, or
the lower median of a merged cluster, as ``apply_restore`` places it). ``get_mrope_input_positions`` numbers the
prompt in the frame of the full (unreduced) prompt, as vLLM's own code and transformers' ``get_rope_index`` do:
text runs on all three axes, an image starting at ``s`` occupies ``s + (t, h, w)`` and the text after it continues
at ``s + max(h, w)``. Each placeholder gets its image's start ``s`` on every axis (``forward`` adds the recorded
offset), and decoding continues at ``context_len + delta`` with ``delta = max(full positions) + 1 - shortened
length``, i.e. the full prompt's next position. Attention runs on the RESTORE backend with the per-axis decay
tables (docs/ops.md §5b).
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement
from vllm.sequence import IntermediateTensors

from .position_rows import encode_rows
from .settings import settings_of

_WHO = "restore_ext.integrations.vllm"
NO_VIDEO = (f"{_WHO}: RESTORE for Qwen2.5-VL in vLLM reduces images only; videos are not supported yet (serve "
            "video requests without the restore hf_overrides)")


class RestoreQwen2_5_VLProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_supported_mm_limits(self):
        return {"image": None}  # vLLM then refuses video items before they reach the model

    def get_num_image_tokens(self, *, image_width: int, image_height: int, image_processor, mm_kwargs) -> int:
        full = super().get_num_image_tokens(image_width=image_width, image_height=image_height,
                                            image_processor=image_processor, mm_kwargs=mm_kwargs)
        return settings_of(self.get_hf_config()).tokens_for(full)


def _processing_info(ctx):
    info = Qwen2_5_VLProcessingInfo(ctx)
    return info if settings_of(info.get_hf_config()) is None else RestoreQwen2_5_VLProcessingInfo(ctx)


class RestoreQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = settings_of(self.info.get_hf_config())
        if settings is None:
            return updates

        def shortened(replacement):
            def replace(item_idx: int):
                tokens = replacement(item_idx)
                return tokens[: settings.tokens_for(len(tokens))]  # one repeated placeholder id: K of them

            return replace

        return [PromptReplacement(modality=u.modality, target=u.target, replacement=shortened(u.replacement))
                if u.modality == "image" else u for u in updates]


@MULTIMODAL_REGISTRY.register_processor(
    RestoreQwen2_5_VLMultiModalProcessor, info=_processing_info, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class RestoreQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = settings_of(self.config)
        self.restore = None
        if settings is not None:
            from .runtime import RestoreRuntime  # imports restore_ext only when RESTORE is asked for

            if self.is_multimodal_pruning_enabled:
                raise ValueError(f"{_WHO}: RESTORE cannot run with video_pruning_rate (EVS) set")
            self.merge = self.config.vision_config.spatial_merge_size
            self.restore = RestoreRuntime(vllm_config, settings, self.language_model, pos_rows=3)
            self.make_empty_intermediate_tensors = self.restore.make_empty_intermediate_tensors(
                self.language_model.make_empty_intermediate_tensors)

    def embed_multimodal(self, **kwargs):
        if self.restore is None:
            return super().embed_multimodal(**kwargs)
        inputs = self._parse_and_validate_multimodal_inputs(**kwargs)
        if inputs.get("video") is not None:
            raise ValueError(NO_VIDEO)
        image_input = inputs.get("image")
        if image_input is None:
            return []
        features = self._process_image_input(image_input)
        grids = [(t, h // self.merge, w // self.merge) for t, h, w in image_input["image_grid_thw"].tolist()]
        return self._reduce(list(features), grids)

    def _reduce(self, features: list, grids: list) -> list:
        """Per image (N, D) merger outputs on an (h, w) grid -> (K, D) reduced outputs, each recorded with its
        representative's (t, h, w) offset in the grid; images with the same N reduce in one batched call."""
        import restore_ext

        s = self.restore.settings
        out: list = [None] * len(features)
        groups: dict = {}
        for i, ((t, h, w), f) in enumerate(zip(grids, features)):
            if t != 1 or f.dim() != 2 or f.shape[0] != h * w:
                raise RuntimeError(f"{_WHO}: expected an image's ({h * w}, D) merger outputs for grid (1, {h}, "
                                   f"{w}), got {tuple(f.shape)} for grid ({t}, {h}, {w})")
            groups.setdefault(f.shape[0], []).append(i)
        for n, idx in groups.items():
            k = s.tokens_for(n)
            s.kept_and_merged(k)
            stacked = torch.stack([features[i] for i in idx])
            red = restore_ext.reduce(stacked, k, base=s.base, keep_ratio=s.keep_ratio, rule=s.rule)
            for j, i in enumerate(idx):
                w = grids[i][2]
                p = red.position[j].to(torch.int64)
                offset = torch.stack([torch.zeros_like(p), p // w, p % w], dim=1)  # (K, 3): t, h, w in the grid
                out[i] = self.restore.record(red.tokens[j].to(stacked.dtype).contiguous().clone(), offset,
                                             red.size[j], n)
        return out

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if self.restore is not None:
            self.restore.embed_step(input_ids.shape[0], multimodal_embeddings, is_multimodal, input_ids.device)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        if self.restore is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        if any(f.modality != "image" for f in mm_features):
            raise ValueError(NO_VIDEO)
        length = len(input_tokens)
        pos = torch.zeros(length, dtype=torch.int64)
        lengths = {f.mm_position.offset: f.mm_position.length for f in mm_features}
        st = nxt = 0  # next token index of the shortened prompt, next position of the full one
        images = 0
        for offset, t, h, w, _ in self.iter_mm_grid_thw(mm_features):
            count = lengths[offset]
            if count != self.restore.settings.tokens_for(t * h * w):
                raise RuntimeError(f"{_WHO}: an image of {t * h * w} tokens has {count} placeholder tokens, "
                                   f"RESTORE expects {self.restore.settings.tokens_for(t * h * w)}")
            pos[st:offset] = nxt + torch.arange(offset - st)
            start = nxt + offset - st
            pos[offset:offset + count] = start  # the image's start; forward adds each output's (t, h, w) offset
            nxt, st = start + max(h, w), offset + count
            images += 1
        pos[st:] = nxt + torch.arange(length - st)
        delta = nxt + (length - st) - length
        rows = pos.expand(3, length).contiguous()
        return encode_rows(rows, self.restore.prompt_flags(length, images > 0)), delta

    def forward(self, input_ids: Optional[torch.Tensor], positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: Optional[torch.Tensor] = None, **kwargs):
        if self.restore is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds, **kwargs)
        pos, log_size, log_size_first = self.restore.begin_step(positions, intermediate_tensors)
        out = super().forward(input_ids, pos.T.contiguous(), intermediate_tensors, inputs_embeds=inputs_embeds,
                              **kwargs)
        if isinstance(out, IntermediateTensors):  # not the last pipeline stage: pass the step's data on
            out["restore_pos"], out["restore_log_size"], out["restore_log_size_first"] = pos, log_size, log_size_first
        return out
