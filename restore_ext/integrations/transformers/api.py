"""Public API: ``apply_restore``, ``remove_restore``, ``is_restore_applied``, and the checks every family shares."""
from __future__ import annotations

import inspect
from typing import Optional

from .adapters import adapter_for
from .attention import ATTN_IMPLEMENTATION
from .generate_guard import GenerateGuard
from .hooks import Patch, check_layers_hook, reject_labels, restore_pre_hook
from .settings import RestoreSettings


def _check_text_model(model) -> None:
    """What no family supports: sliding-window or other non-full attention layers, logit soft-capping."""
    tc = model.config.get_text_config(decoder=True)
    layer_types = getattr(tc, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        bad = sorted({t for t in layer_types if t != "full_attention"})
        raise ValueError(
            f"apply_restore: text_config.layer_types contains {bad}; RESTORE supports full attention layers only"
        )
    sliding = getattr(tc, "sliding_window", None)
    if sliding is not None and (layer_types is None or getattr(tc, "use_sliding_window", True)):
        raise ValueError(
            f"apply_restore: text_config.sliding_window={sliding} ({getattr(tc, 'model_type', None)}): sliding-window "
            "attention is not supported (RESTORE's shortened sequence changes which keys a window covers); set it "
            "to None for full attention"
        )
    if getattr(tc, "attn_logit_softcapping", None) is not None:
        raise ValueError("apply_restore: text_config.attn_logit_softcapping is not supported")


def apply_restore(
    model,
    num_tokens: Optional[int] = None,
    base: str = "divprune",
    keep_ratio: float = 0.5,
    rule: str = "reference",
    calibrate: bool = True,
    decode_distance_bias: bool = False,
    *,
    ratio: Optional[float] = None,
):
    """Make ``model(...)`` and ``model.generate(...)`` of a transformers LLaVA, LLaVA-NeXT, Qwen2.5-VL or Qwen3-VL
    model run RESTORE.

    num_tokens: visual tokens per image (Qwen: and per video) after reduction (an item with fewer keeps all of them);
        an int or a 0-d integer tensor; 64 unless ``ratio`` is given.
    ratio: instead of num_tokens, a budget per image or video for dynamic resolution: ``round(ratio * N)`` of its N
        tokens (rounded half up, at least 2), ratio in (0, 1].
    base: the base method that picks the ``round(num_tokens * keep_ratio)`` retained tokens: "divprune",
        "uniform", or a callable(features (M, N, D), k) -> (M, k) indices (see restore_ext.select).
    keep_ratio: retained share of ``num_tokens``, a number in [0, 1]; the rest are merged anchors. 1.0 = pruning
        alone (no merge), 0.0 = merging alone.
    rule: anchor rule of the merge, "reference" (authors' code) or "dpc".
    calibrate: add log(size) and the RoPE distance table to attention logits. False keeps only the padding mask
        (reduction + position preservation alone).
    decode_distance_bias: also add the distance table during decode (the authors add log(size) only).
    Every argument is checked here; nothing is installed when one is wrong. Returns the model (patched in place).
    """
    adapter = adapter_for(model)
    _check_text_model(model)
    adapter.check_model(model)
    if is_restore_applied(model):
        raise ValueError("apply_restore: RESTORE is already applied to this model; call remove_restore(model) first")
    settings = RestoreSettings(num_tokens, base, keep_ratio, rule, calibrate, decode_distance_bias, ratio)
    inner = adapter.inner(model)
    params = inspect.signature(type(inner).forward).parameters
    patch = Patch(
        adapter,
        settings,
        previous_attn=model.config.get_text_config(decoder=True)._attn_implementation,
        cache_kwarg="cache" if "cache" in params else "past_key_values",
        num_layers=len(adapter.language_model(inner).layers),
    )
    model._restore_patch = inner._restore_patch = patch
    patch.handles += [
        inner.register_forward_pre_hook(restore_pre_hook, with_kwargs=True),
        inner.register_forward_hook(check_layers_hook, with_kwargs=True),
        model.register_forward_pre_hook(reject_labels, with_kwargs=True),
        *adapter.install(model, inner),
    ]
    model.generate = GenerateGuard(model)
    model.set_attn_implementation({"text_config": ATTN_IMPLEMENTATION})
    return model


def remove_restore(model):
    """Undo :func:`apply_restore`: hooks removed, ``generate`` and the text model's attention implementation as
    before. Returns the model."""
    patch = getattr(model, "_restore_patch", None)
    if patch is None:
        raise ValueError(f"remove_restore: RESTORE is not applied to this {type(model).__name__}")
    for handle in patch.handles:
        handle.remove()
    if "generate" in vars(model):
        del model.generate
    inner = patch.adapter.inner(model)
    if "_restore_patch" in vars(inner):
        del inner._restore_patch
    model.set_attn_implementation({"text_config": patch.previous_attn})
    del model._restore_patch
    return model


def is_restore_applied(model) -> bool:
    return getattr(model, "_restore_patch", None) is not None
