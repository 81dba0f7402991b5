"""Model-family adapters: everything the model-agnostic core needs to know about one family, and nothing more.

The core (``shortening``, ``hooks``, ``attention``, ``generate_guard``, ``api``) handles settings, reduction, the
shortened prompt, per-key state beside the KV cache, calibrated attention and the ``generate`` guard for every
family alike. An adapter (a subclass of ``..adapter.Adapter``, one module per family, listed in ``ADAPTERS``
below) provides:

- ``model_classes()``: the ``*ForConditionalGeneration`` classes it handles; ``check_model(model)``: ValueErrors
  for configurations it does not handle (RoPE types, language models); ``inner(model)`` / ``language_model(inner)``.
- ``visual_inputs(inner, kw, input_ids, inputs_embeds)`` -> ``[VisualInput]``, one per modality (image, video):
  the per-item features after the projector / merger, in the model's own placeholder order, the placeholder mask,
  and ``extras``, per-token values of the same items that must follow the same kept / merged assignment (Qwen3-VL's
  DeepStack features). Every item of every modality is reduced the same way (``settings.budget(N)`` tokens).
- ``positions(inner, kw, input_ids, valid, start)`` -> the full-prompt positions, (B, L) for 1-D RoPE or (B, L, S)
  for multi-axis RoPE with ``position_axes = S`` (Qwen's M-RoPE: S = 3, from ``position_ids`` in the model's
  layout when given, else ``get_rope_index``); each reduced token keeps the positions of its representative (the
  retained token, or the lower-median member of a merged cluster), text keeps its own.
- ``next_position(positions, valid)`` -> (B,): where decoding continues (default: one past the largest valid
  position, which is also where Qwen's ``rope_deltas`` continue); decode steps without ``position_ids`` get
  ``next + arange`` on every axis.
- ``model_position_ids(positions)``: positions in the layout the inner forward takes (LLaVA (B, L); Qwen (3, B, L)).
- ``distance_table(inner, size, device)``: (size,) or (S, size), from the model's own rotary ``inv_freq`` (and
  M-RoPE sections); the core passes positions and table to ``calibrated_attention`` as they are.
- ``cleared_inputs``: inner-forward kwargs that would encode visual inputs again (set to None);
  ``forward_overrides(inner, short)``: kwargs to add for the shortened prompt (``short.modality`` tells which
  visual input each token came from, ``short.extras`` holds the reduced extras per token), e.g. Qwen3-VL's reduced
  features as ``mm_encoder_outputs`` so that the model itself injects its DeepStack features.

A new family is one new module here plus one line in ``ADAPTERS``; the core does not change.
"""
from __future__ import annotations

from .llava import LlavaAdapter

ADAPTERS = (LlavaAdapter(),)


def supported_classes() -> list:
    return [cls for adapter in ADAPTERS for cls in adapter.model_classes()]


def adapter_for(model):
    """The adapter of ``type(model)`` (exact type: a subclass may change what the adapter relies on)."""
    for adapter in ADAPTERS:
        if type(model) in adapter.model_classes():
            return adapter
    raise ValueError(
        f"apply_restore: {type(model).__name__} is not supported; supported: "
        f"{', '.join(c.__name__ for c in supported_classes())} (transformers>=5,<6)"
    )
