"""LLaVA (``LlavaForConditionalGeneration``) and LLaVA-NeXT (``LlavaNextForConditionalGeneration``): one image
modality, 1-D RoPE positions (the token index in the full prompt), Llama / Mistral / Qwen2 language models."""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

import restore_ext
from restore_ext.cls_attention import ClsAttentionRecorder, cls_attention_layer

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

    def check_cls_attention(self, model, base: str) -> None:
        inner = self.inner(model)
        layer, strategy = _feature_choice(inner, {})
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise ValueError(
                f"apply_restore: base={base!r} ranks tokens by one vision layer's [CLS] attention, but "
                f"vision_feature_layer={layer!r} concatenates several layers"
            )
        supported = ("default",) if _is_next(inner) else ("default", "full")  # NeXT cannot pack a [CLS] token
        if strategy not in supported:
            raise ValueError(
                f"apply_restore: base={base!r} with vision_feature_select_strategy={strategy!r} on "
                f"{type(model).__name__} is not supported; supported: {', '.join(supported)}"
            )
        cls_attention_layer(inner.vision_tower, layer)  # the tower's own checks: a [CLS] token, a CLIP-style layer

    def install(self, model, inner) -> list:
        """For the bases that rank by [CLS] attention: a pre-hook that records it at ``vision_feature_layer`` and
        an instance ``get_image_features`` that attaches it, laid out per image as the features are, to what it
        returns, wherever the images are encoded (in the forward, or in ``generate`` ahead of it)."""
        if not inner._restore_patch.settings.needs_scores:
            return []
        layer = inner.config.vision_feature_layer
        recorder = ClsAttentionRecorder()
        hook = cls_attention_layer(inner.vision_tower, layer).register_forward_pre_hook(
            recorder.before_layer, with_kwargs=True
        )
        inner.get_image_features = ScoredImageFeatures(inner, recorder, layer)
        return [hook, InstanceAttribute(inner, "get_image_features")]

    def visual_inputs(self, inner, kw, input_ids, inputs_embeds, with_scores: bool = False) -> list:
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
        scores = getattr(out, "cls_attention", None) if with_scores else None
        if with_scores and scores is None:
            raise ValueError(
                "apply_restore: the base ranks tokens by the vision tower's [CLS] attention at the model's "
                f"vision_feature_layer={inner.config.vision_feature_layer}, but these image features came without it "
                "(encoded at another vision_feature_layer, or not by this model's get_image_features)"
            )
        return [VisualInput("image", features, mask, scores=scores)]

    def distance_table(self, inner, size, device) -> Tensor:
        inv_freq = self.language_model(inner).rotary_emb.inv_freq
        return restore_ext.distance_bias_table(size, inv_freq.to(device))


def _is_next(inner) -> bool:
    return hasattr(inner, "pack_image_features")


def _feature_choice(inner, kw: dict):
    """(vision_feature_layer, vision_feature_select_strategy) this forward uses: its arguments, else the config's."""
    layer, strategy = kw.get("vision_feature_layer"), kw.get("vision_feature_select_strategy")
    layer = inner.config.vision_feature_layer if layer is None else layer
    return layer, inner.config.vision_feature_select_strategy if strategy is None else strategy


class ScoredImageFeatures:
    """``inner.get_image_features`` that also attaches each image's [CLS] attention to its output as
    ``cls_attention`` (per image (N_i,), laid out as the image's features). A module-level class, not a closure, so
    that a copied or unpickled model gets its own (it holds the module and the recorder, both copied with it)."""

    def __init__(self, inner, recorder: ClsAttentionRecorder, layer: int):
        self.inner, self.recorder, self.layer = inner, recorder, layer

    def __call__(self, *args, **kwargs):
        method = type(self.inner).get_image_features
        out = method(self.inner, *args, **kwargs)
        rows, self.recorder.value = self.recorder.value, None
        call = inspect.signature(method).bind(self.inner, *args, **kwargs).arguments
        layer, strategy = _feature_choice(self.inner, call)
        if rows is not None and layer == self.layer and hasattr(out, "__dict__"):
            out.cls_attention = _item_scores(self.inner, strategy, call.get("image_sizes"), rows)
        return out


class InstanceAttribute:
    """A removable handle for an attribute set on a module instance (remove_restore deletes it)."""

    def __init__(self, module, name: str):
        self.module, self.name = module, name

    def remove(self) -> None:
        vars(self.module).pop(self.name, None)


def _item_scores(inner, strategy: str, image_sizes, rows: Tensor) -> list:
    """Per image, the [CLS] attention of each of its tokens, laid out as its features are, from the tower's rows
    (crops, 1 + P): "default" drops the [CLS] column as the features drop the [CLS] token. LLaVA-NeXT packs each
    image's crops (base crop, unpadded grid, a newline token per grid row) with its own ``pack_image_features``,
    the scores as one-channel features; newline tokens, which the tower never saw, score 0."""
    rows = rows[:, 1:] if strategy == "default" else rows
    if not _is_next(inner):
        return list(rows)
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    counts = [
        image_size_to_num_patches(size, inner.config.image_grid_pinpoints, inner.config.vision_config.image_size)
        for size in image_sizes
    ]
    crops = list(torch.split(rows[..., None], counts))
    packed, _ = inner.pack_image_features(crops, image_sizes, strategy, image_newline=rows.new_zeros(1))
    return [p[:, 0] for p in packed]
