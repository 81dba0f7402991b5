"""The interface between the model-agnostic core and one model family: ``VisualInput`` and ``Adapter``.

What an adapter must provide, and what the core does with it, is told in ``adapters/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor


@dataclass
class VisualInput:
    """One modality's visual tokens in one forward, as the model would scatter them into the prompt.

    ``features[i]`` (N_i, D) fills the i-th run of ``placeholder`` tokens in row-major (batch, seq) order, the
    order of the model's own ``masked_scatter``; each run must be contiguous within one row. ``extras`` are further
    per-token values of the same items (name -> per item (N_i, ...), e.g. Qwen3-VL's DeepStack features stacked
    over layers) that the core reduces with the same kept / merged assignment (merged: plain mean)."""

    modality: str  # "image", "video": used in messages
    features: list  # [(N_i, D)] per item
    placeholder: Tensor  # (B, L) bool
    extras: dict = field(default_factory=dict)  # name -> [(N_i, ...)] per item


class Adapter:
    """A model family's side of the integration. Subclasses override what differs from these defaults, which
    fit a LLaVA-like model: ``model.model`` is the multimodal inner model with a ``language_model`` and 1-D RoPE
    positions (B, L) that are the token index in the full prompt."""

    family = ""
    # 1: positions are (B, L) and the distance table (T,); S > 1: positions (B, L, S) and the table (S, T)
    position_axes = 1
    # inner-forward keyword arguments that would make the model encode or scatter visual inputs again
    cleared_inputs = ("pixel_values", "mm_encoder_outputs")

    def model_classes(self) -> tuple:
        """The ``*ForConditionalGeneration`` classes this adapter handles (exact types)."""
        raise NotImplementedError

    def check_model(self, model) -> None:
        """Raise ValueError naming what is unsupported in this model's configuration (family-specific checks;
        the core checks sliding windows, soft-capping and non-full attention layers itself)."""

    def inner(self, model) -> torch.nn.Module:
        """The inner multimodal model whose forward gets RESTORE's pre-hook."""
        return model.model

    def language_model(self, inner) -> torch.nn.Module:
        return inner.language_model

    def visual_inputs(self, inner, kw: dict, input_ids: Optional[Tensor], inputs_embeds: Tensor) -> list:
        """The ``VisualInput`` of each modality this forward carries (encoding them: vision tower + projector), or
        an empty list for a text-only forward (decode steps)."""
        raise NotImplementedError

    def positions(
        self, inner, kw: dict, input_ids: Optional[Tensor], valid: Tensor, start: Optional[Tensor], visual: list
    ) -> Tensor:
        """The full-prompt positions of this forward's tokens, (B, L) or (B, L, S) int64: ``kw["position_ids"]``
        (in the model's own layout) when given, else what the model would compute. ``start`` (B,) is where the
        cached sequence continues (None without a cache); ``valid`` (B, L) marks non-padding tokens; ``visual`` is
        what ``visual_inputs`` returned for this forward (empty: a text-only forward)."""
        pos = kw.get("position_ids")
        bsz, seq = valid.shape
        if pos is None:
            pos = torch.arange(seq, device=valid.device)[None, :] + (0 if start is None else start[:, None])
        if pos.dim() != 2:
            raise ValueError(f"apply_restore: position_ids must be 2-D (batch, seq), got {tuple(pos.shape)}")
        return pos.to(valid.device).long().expand(bsz, seq)

    def next_position(self, positions: Tensor, valid: Tensor) -> Tensor:
        """(B,) original position where decoding continues after these tokens: one past the largest position of a
        valid token (over every axis). Qwen's M-RoPE continues at the same place (its ``rope_deltas`` frame)."""
        pos = positions if positions.dim() == 2 else positions.amax(-1)
        return torch.where(valid, pos, -1).amax(1) + 1

    def model_position_ids(self, positions: Tensor) -> Tensor:
        """``positions`` in the layout the inner forward takes as ``position_ids`` (Qwen: (3, B, L))."""
        return positions

    def distance_table(self, inner, size: int, device) -> Tensor:
        """The RoPE distance table for distances < ``size`` from the model's own rotary frequencies: (size,) for
        1-D positions, (S, size) for multi-axis ones."""
        raise NotImplementedError

    def forward_overrides(self, inner, short, keys) -> dict:
        """Keyword arguments to add to (or replace in) the inner forward's call for the shortened prompt ``short``
        (a ``shortening.ShortenedPrompt``; ``keys`` the ``KeyState`` of the whole cache after this forward), e.g.
        pre-encoded reduced features for the model to scatter itself."""
        return {}

    def install(self, model, inner) -> list:
        """Family-specific hooks to install at apply_restore (removable handles; remove_restore removes them), e.g.
        a language-model pre-hook that injects Qwen3-VL's reduced DeepStack features read from the
        ``restore_state`` keyword (``state.prompt.extras``). Hooks must be module-level functions or bound methods
        of picklable objects, never closures, so that a copied model's hooks act on the copy."""
        return []


def placeholder_mask(inner, input_ids: Optional[Tensor], inputs_embeds: Tensor, token_id: int) -> Tensor:
    """(B, L) bool: tokens that are ``token_id``, found by id or, for ``inputs_embeds``, by its embedding (as the
    models' own ``get_placeholder_mask`` does)."""
    if input_ids is not None:
        return input_ids == token_id
    ref = inner.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
    return (inputs_embeds == ref).all(-1)
