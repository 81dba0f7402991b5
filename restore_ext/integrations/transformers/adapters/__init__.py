"""Model-family adapters: everything the model-agnostic core needs to know about one family, and nothing more.

The core (``shortening``, ``hooks``, ``attention``, ``generate_guard``, ``api``) handles settings and budgets
(``num_tokens`` or ``ratio`` per item), reduction, the shortened prompt, per-key state beside the KV cache,
calibrated attention and the ``generate`` guard for every family alike. An adapter (a stateless subclass of
``..adapter.Adapter``, one module per family, listed in ``ADAPTERS`` below) provides:

- ``model_classes()``: the ``*ForConditionalGeneration`` classes it handles; ``check_model(model)``: ValueErrors
  for configurations it does not handle (RoPE types, language models); ``inner(model)`` / ``language_model(inner)``.
- ``visual_inputs(inner, kw, input_ids, inputs_embeds)`` -> ``[VisualInput]``, one per modality (image, video):
  the per-item features after the projector / merger in the model's own placeholder order, the placeholder mask
  (an item's placeholders lie in one row, contiguous or not: Qwen3-VL's video frames are split by timestamps),
  and ``extras``, per-token values of the same items that follow the same kept / merged assignment (merged:
  plain mean), e.g. Qwen3-VL's DeepStack features as (N_i, layers, D). Every item of every modality is reduced the
  same way, to ``settings.budget(N)`` tokens, and each output lands on its representative's placeholder slot
  (the retained token, or the lower-median member of a merged cluster).
- ``positions(inner, kw, input_ids, valid, start, visual)`` -> the full-prompt positions: (B, L) for 1-D RoPE, or
  (B, L, S) with ``position_axes = S`` for multi-axis RoPE (Qwen's M-RoPE: S = 3; from ``position_ids`` in the
  model's layout when given, else ``get_rope_index``). Every kept token keeps its full-prompt positions.
- ``next_position(positions, valid)`` -> (B,): where decoding continues (default: one past the largest valid
  position over every axis, which is where Qwen's ``rope_deltas`` continue); decode steps that come without
  ``position_ids`` get ``next + arange`` from ``positions(..., start=next)``.
- ``model_position_ids(positions)``: positions in the layout the inner forward takes (LLaVA (B, L); Qwen (3, B, L)).
- ``distance_table(inner, size, device)``: (size,) or (S, size) from the model's own rotary ``inv_freq`` (and
  M-RoPE sections); the core hands positions and table to ``calibrated_attention`` as they are, and gives rows
  without a reduced item position 0 everywhere (distance 0, where the table must be exactly 0).
- ``cleared_inputs``: inner-forward kwargs that would encode visual inputs again (set to None).
- Optional: ``forward_overrides(inner, short, keys)`` -> kwargs to add to the inner forward for the shortened prompt
  (``short.modality`` tells which ``VisualInput`` each token came from, ``short.extras`` holds the reduced extras
  per token, ``keys`` the whole cache's ``KeyState``); ``install(model, inner)`` -> extra removable hooks, e.g. a
  language-model pre-hook that reads ``kwargs["restore_state"].prompt`` to inject DeepStack features.

A new family is one new module here plus one line in ``ADAPTERS``; the core does not change.
"""
from __future__ import annotations

from .llava import LlavaAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen3_vl import Qwen3VLAdapter

ADAPTERS = (LlavaAdapter(), Qwen2_5_VLAdapter(), Qwen3VLAdapter())


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
