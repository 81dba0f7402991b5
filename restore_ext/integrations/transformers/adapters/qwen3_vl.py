"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): images and videos (a timestamp before each frame, so a video's
placeholders are several runs), M-RoPE with ``mrope_section`` interleaved over the frequencies, and DeepStack.

DeepStack adds features of early vision blocks to the visual tokens' hidden states after the first decoder layers.
They are reduced with the main features' assignment (the core's per-token ``extras``): a retained token keeps its
own, a merged output gets the plain mean of the same cluster. A pre-hook on the language model hands it the reduced
features and the visual slots of the shortened prompt (``visual_pos_masks`` / ``deepstack_visual_embeds``, the
arguments the model's own forward fills for a full prompt), so the model's own code adds them where it always does.
Positions, budgets and decode: see ``qwen_vl``.
"""
from __future__ import annotations

import torch

from ..adapter import VisualInput
from .qwen_vl import QwenVLAdapter

DEEPSTACK = "deepstack"


def _per_item(layers, lengths) -> list:
    """DeepStack features per item, (N_i, layers, D): transformers gives per layer either a tuple of per-item
    tensors or one tensor of all items' tokens, depending on the version."""
    per_layer = [layer if isinstance(layer, (tuple, list)) else torch.split(layer, lengths) for layer in layers]
    return [torch.stack(item, 1) for item in zip(*per_layer)]


def inject_deepstack(language_model, args, kwargs):
    """Forward pre-hook of the text model: the reduced DeepStack features of this forward's shortened prompt."""
    prompt = getattr(kwargs.get("restore_state"), "prompt", None)
    if prompt is None or not prompt.has_visual or DEEPSTACK not in prompt.extras:
        return None
    slots = prompt.keys.visual  # (B, L'): the reduced visual tokens, row-major as the model's masks are
    deep = prompt.extras[DEEPSTACK][slots]  # (visual tokens, layers, D)
    kwargs["visual_pos_masks"] = slots
    kwargs["deepstack_visual_embeds"] = [deep[:, layer] for layer in range(deep.shape[1])]
    return args, kwargs


class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    interleaved = True

    def model_class_names(self) -> tuple:
        return ("Qwen3VLForConditionalGeneration",)

    def visual_input(self, modality, out, placeholder) -> VisualInput:
        vis = super().visual_input(modality, out, placeholder)
        layers = getattr(out, "deepstack_features", None) if out is not None else None
        if layers:
            vis.extras[DEEPSTACK] = _per_item(layers, [f.shape[0] for f in vis.features])
        return vis

    def install(self, model, inner) -> list:
        return [self.language_model(inner).register_forward_pre_hook(inject_deepstack, with_kwargs=True)]
