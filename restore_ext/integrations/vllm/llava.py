"""LLaVA (1-D RoPE) with RESTORE in vLLM.

Registered by the plugin under vLLM's own architecture name, ``LlavaForConditionalGeneration``, so that one
``hf_overrides`` serves every supported family. Without the ``restore`` entry in the HF config every method below
hands straight over to vLLM's class (and restore_ext is not even imported): a LLaVA model served without RESTORE
runs vLLM's code unchanged.

With it: the prompt gets K placeholder tokens per image; ``embed_multimodal`` reduces each image's N projector
outputs to K with :func:`restore_ext.reduce`; ``get_mrope_input_positions`` gives every token its position in the
full (unreduced) prompt, visual tokens their image's first position (``forward`` adds each token's offset), and
the decode offset ``sum(N - K)``; attention runs on the RESTORE backend.
"""
from __future__ import annotations

from typing import Optional

import torch

from vllm.model_executor.models.interfaces import SupportsMRoPE
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)
from vllm.model_executor.models.vision import get_num_selected_vision_tokens, get_vision_encoder_info
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from .position_rows import encode_rows
from .settings import RestoreSettings, settings_of

_WHO = "restore_ext.integrations.vllm"


def full_image_tokens(hf_config) -> int:
    """N: visual tokens a LLaVA image gives the language model before reduction (fixed-resolution tower)."""
    info = get_vision_encoder_info(hf_config)
    side = info.get_image_size()
    return get_num_selected_vision_tokens(info.get_num_image_tokens(image_width=side, image_height=side),
                                          hf_config.vision_feature_select_strategy)


class RestoreLlavaProcessingInfo(LlavaProcessingInfo):
    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        full = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        return settings_of(self.get_hf_config()).tokens_for(full)


def _processing_info(ctx):
    info = _build_llava_or_pixtral_hf_info(ctx)
    if settings_of(ctx.get_hf_config()) is None:
        return info
    if type(info) is not LlavaProcessingInfo:
        raise ValueError(f"{_WHO}: RESTORE supports LLaVA with a CLIP/SigLIP tower, not {type(info).__name__}")
    return RestoreLlavaProcessingInfo(ctx)


@MULTIMODAL_REGISTRY.register_processor(
    _build_llava_or_pixtral_hf_processor, info=_processing_info, dummy_inputs=LlavaDummyInputsBuilder
)
class RestoreLlavaForConditionalGeneration(LlavaForConditionalGeneration, SupportsMRoPE):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = settings_of(self.config)
        self.restore = None if settings is None else self._restore_runtime(vllm_config, settings)

    def _restore_runtime(self, vllm_config, settings: RestoreSettings):
        from .runtime import RestoreRuntime  # imports restore_ext only when RESTORE is asked for

        if self.config.vision_config.model_type == "pixtral":
            raise ValueError(f"{_WHO}: RESTORE does not support Pixtral-based LLaVA checkpoints")
        self.full_tokens = full_image_tokens(self.config)
        self.num_tokens = settings.tokens_for(self.full_tokens)
        settings.kept_and_merged(self.num_tokens)
        runtime = RestoreRuntime(vllm_config, settings, self.language_model, pos_rows=1)
        self.make_empty_intermediate_tensors = runtime.make_empty_intermediate_tensors(
            self.language_model.make_empty_intermediate_tensors)
        return runtime

    def embed_multimodal(self, **kwargs):
        features = super().embed_multimodal(**kwargs)
        if self.restore is None or features is None or len(features) == 0:
            return features
        import restore_ext

        s = self.restore.settings
        stacked = features if isinstance(features, torch.Tensor) else torch.stack(list(features))
        if stacked.dim() != 3 or stacked.shape[1] != self.full_tokens:
            raise RuntimeError(f"{_WHO}: expected (images, {self.full_tokens}, D) projector outputs, got "
                               f"{tuple(stacked.shape)}")
        red = restore_ext.reduce(stacked, self.num_tokens, base=s.base, keep_ratio=s.keep_ratio, rule=s.rule)
        return [self.restore.record(red.tokens[i].to(stacked.dtype).contiguous().clone(), red.position[i, :, None],
                                    red.size[i], self.full_tokens)
                for i in range(stacked.shape[0])]

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        if self.restore is not None:
            self.restore.embed_step(input_ids.shape[0], multimodal_embeddings, is_multimodal, input_ids.device)
        return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        if self.restore is None:
            raise RuntimeError(f"{_WHO}: M-RoPE positions were asked of a LLaVA model without RESTORE settings")
        length = len(input_tokens)
        pos = torch.arange(length, dtype=torch.int64)
        images = sorted((f.mm_position.offset, f.mm_position.length) for f in mm_features if f.modality == "image")
        dropped = 0
        for offset, count in images:
            if count != self.num_tokens:
                raise RuntimeError(f"{_WHO}: an image has {count} placeholder tokens, RESTORE expects "
                                   f"{self.num_tokens}")
            pos[offset:offset + count] = offset + dropped  # the image's first position; forward adds the offset
            dropped += self.full_tokens - count
            pos[offset + count:] += self.full_tokens - count
        flags = self.restore.prompt_flags(length, bool(images))
        return encode_rows(pos.expand(3, length).contiguous(), flags), dropped

    def forward(self, input_ids: Optional[torch.Tensor], positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: Optional[torch.Tensor] = None, **kwargs):
        if self.restore is None:
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds, **kwargs)
        pos, log_size, log_size_first = self.restore.begin_step(positions, intermediate_tensors)
        out = super().forward(input_ids, pos[:, 0], intermediate_tensors, inputs_embeds=inputs_embeds, **kwargs)
        if isinstance(out, IntermediateTensors):  # not the last pipeline stage: pass the step's data on
            out["restore_pos"], out["restore_log_size"], out["restore_log_size_first"] = pos, log_size, log_size_first
        return out
