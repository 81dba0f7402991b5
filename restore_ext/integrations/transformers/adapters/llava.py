"""LLaVA (``LlavaForConditionalGeneration``) and LLaVA-NeXT (``LlavaNextForConditionalGeneration``): one image
modality, 1-D RoPE positions (the token index in the full prompt), Llama / Mistral / Qwen2 language models."""
from __future__ import annotations

from torch import Tensor

import restore_ext

from ..adapter import Adapter, VisualInput, placeholder_mask

TEXT_MODELS = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # inverse frequencies that do not change with the length


class LlavaAdapter(Adapter):
    family = "llava"

    def model_classes(self) -> tuple:
        classes = []
        try:
            from transformers import LlavaForConditionalGeneration

            classes.append(LlavaForConditionalGeneration)
        except ImportError:  # pragma: no cover
            pass
        try:
            from transformers import LlavaNextForConditionalGeneration

            classes.append(LlavaNextForConditionalGeneration)
        except ImportError:  # pragma: no cover
            pass
        return tuple(classes)

    def check_model(self, model) -> None:
        tc = model.config.get_text_config(decoder=True)
        mt = getattr(tc, "model_type", None)
        if mt not in TEXT_MODELS:
            raise ValueError(
                f"apply_restore: {type(model).__name__} with text_config.model_type={mt!r} is not supported; "
                f"supported language models: {', '.join(TEXT_MODELS)}"
            )
        rope = getattr(tc, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"apply_restore: text_config.rope_parameters['rope_type']={rope_type!r} is not supported (its inverse "
                f"frequencies change with the sequence length); supported: {', '.join(ROPE_TYPES)}"
            )
        lm = self.language_model(self.inner(model))
        if not isinstance(getattr(getattr(lm, "rotary_emb", None), "inv_freq", None), Tensor):
            raise ValueError(
                f"apply_restore: {type(lm).__name__} has no rotary_emb.inv_freq to build the distance table"
            )

    def visual_inputs(self, inner, kw, input_ids, inputs_embeds) -> list:
        out = (kw.get("mm_encoder_outputs") or {}).get("image")
        pixel_values = kw.get("pixel_values")
        if out is None and pixel_values is not None and pixel_values.shape[0] > 0:
            extra = {} if kw.get("image_sizes") is None else {"image_sizes": kw["image_sizes"]}
            out = inner.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=kw.get("vision_feature_layer"),
                vision_feature_select_strategy=kw.get("vision_feature_select_strategy"),
                return_dict=True,
                **extra,
            )
        if out is None:
            return []
        features = list(out.pooler_output)  # (M, N, D) tensor or a list of (N_i, D) (LLaVA-NeXT's anyres)
        mask = placeholder_mask(inner, input_ids, inputs_embeds, inner.config.image_token_id)
        return [VisualInput("image", features, mask)]

    def distance_table(self, inner, size, device) -> Tensor:
        inv_freq = self.language_model(inner).rotary_emb.inv_freq
        return restore_ext.distance_bias_table(size, inv_freq.to(device))
