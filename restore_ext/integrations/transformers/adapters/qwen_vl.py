"""What Qwen2.5-VL and Qwen3-VL share: images and videos, M-RoPE (t, h, w) positions, per-axis decay tables.

How positions are preserved (M-RoPE)
-------------------------------------
Both models give every token three position ids (t, h, w), computed for the *full* prompt by the model's own
``get_rope_index``: text carries one running id on all three axes; the N placeholders of an image or video
(N = t * h * w / 4 after the 2 x 2 merger, in raster order: t, then h, then w) carry ``start + (t * stride, row,
col)``, and the text after it continues at ``start + max(h, w) / 2`` (Qwen2.5-VL spaces video frames by
``tokens_per_second * seconds_per_grid`` on t; Qwen3-VL gives each video frame a timestamp text and a t = 1 grid
of its own, so a video's placeholders are several runs, one per frame).

RESTORE shortens the sequence without moving anything in that frame:

1. Per image and per video, after the merger, its N tokens become K (``num_tokens`` capped at N, or
   ``round(ratio * N)``, at least 2) with :func:`restore_ext.reduce`. Each output has a representative among the
   N: the retained token itself, or for a merged cluster the lower median of its members (``Reduced.position``);
   outputs come in raster order of their representatives.
2. The shortened sequence keeps the text and, for each output, its representative's placeholder slot; every kept
   token keeps the (t, h, w) ids that slot had in the full prompt. Text after an image keeps its full-prompt ids,
   and RoPE sees between any two kept tokens the distances of the full prompt.
3. Decode continues in the full frame: the first generated token sits at ``max(full prompt ids) + 1`` on all
   three axes (transformers' ``rope_deltas`` rule on the full prompt). The cache holds only the shortened prompt,
   so the offset is taken against the *shortened* length: after a reduced prefill the model's ``rope_deltas`` is
   ``(max(full ids) + 1) - shortened valid length``, and cached generation equals recomputation from scratch.
4. The bias uses the same ids: ``log(2 - sum_s table[s, min(|q_s - k_s|, T - 1)])`` with the per-axis decay tables
   of :func:`restore_ext.rope_decay_tables`, from the model's ``inv_freq`` and the axis each frequency turns with
   (chunks of ``mrope_section`` for Qwen2.5-VL, interleaved for Qwen3-VL, checked against the model's rotary code).
"""
from __future__ import annotations

import inspect
import sys

import torch
from torch import Tensor

from restore_ext.attention_bias import mrope_axis_of_freq, rope_decay_tables

from ..adapter import Adapter, VisualInput

ROPE_TYPES = ("default", "linear", "yarn")  # inverse frequencies that do not change with the length
MODALITIES = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


class QwenVLAdapter(Adapter):
    position_axes = 3
    interleaved = False  # Qwen3-VL: the M-RoPE sections are interleaved over the frequencies
    cleared_inputs = ("pixel_values", "pixel_values_videos", "mm_encoder_outputs", "image_grid_thw",
                      "video_grid_thw", "mm_token_type_ids")

    def model_class_names(self) -> tuple:
        raise NotImplementedError

    def model_classes(self) -> tuple:
        import transformers

        return tuple(getattr(transformers, name) for name in self.model_class_names() if hasattr(transformers, name))

    def axis_of_freq(self, model_or_inner) -> Tensor:
        """The axis (0 = t, 1 = h, 2 = w) each rotary frequency turns with: the config rule, which must agree with
        what the installed transformers' rotary module does."""
        inner = getattr(model_or_inner, "model", model_or_inner)
        rotary = self.language_model(inner).rotary_emb
        tc = inner.config.get_text_config(decoder=True)
        section = (getattr(tc, "rope_parameters", None) or {}).get("mrope_section")
        if section is None:
            raise ValueError(f"apply_restore: {type(inner).__name__} has no rope_parameters['mrope_section']")
        rule = mrope_axis_of_freq(section, rotary.inv_freq.shape[0], interleaved=self.interleaved)
        if not torch.equal(rule, rotary_axis_of_freq(rotary, section)):
            raise ValueError(
                f"apply_restore: {type(rotary).__name__} of this transformers version lays out mrope_section "
                f"{list(section)} differently from the {'interleaved' if self.interleaved else 'chunked'} rule "
                "RESTORE's M-RoPE bias is built for"
            )
        return rule

    def check_model(self, model) -> None:
        if "mm_token_type_ids" not in inspect.signature(type(self.inner(model)).get_rope_index).parameters:
            import transformers

            raise ValueError(
                f"apply_restore: {type(model).__name__} needs a transformers whose get_rope_index takes "
                f"mm_token_type_ids (the M-RoPE positions RESTORE preserves come from it; tested: 5.12.1, 5.24.0), "
                f"found transformers {transformers.__version__}"
            )
        tc = model.config.get_text_config(decoder=True)
        rope_type = (getattr(tc, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"apply_restore: text_config.rope_parameters['rope_type']={rope_type!r} is not supported (its inverse "
                f"frequencies change with the sequence length); supported: {', '.join(ROPE_TYPES)}"
            )
        self.axis_of_freq(model)

    # ---------------------------------------------------------------------------------------------------------
    def encode(self, inner, kw: dict, modality: str, pixels: str, grid: str):
        """The vision tower's output for one modality (``mm_encoder_outputs`` when given), or None."""
        out = (kw.get("mm_encoder_outputs") or {}).get(modality)
        if out is None and kw.get(pixels) is not None:
            encode = inner.get_image_features if modality == "image" else inner.get_video_features
            out = encode(kw[pixels], kw.get(grid), return_dict=True)
        return out

    def visual_input(self, modality: str, out, placeholder: Tensor) -> VisualInput:
        return VisualInput(modality, list(out.pooler_output) if out is not None else [], placeholder)

    def visual_inputs(self, inner, kw, input_ids, inputs_embeds) -> list:
        outs = [self.encode(inner, kw, *m) for m in MODALITIES]
        if all(out is None for out in outs):
            return []
        masks = inner.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds)  # (image, video), (B, L, 1)
        # always [image, video], so that a token's modality index says which of the two it is
        return [self.visual_input(m[0], out, mask[..., 0]) for m, out, mask in zip(MODALITIES, outs, masks)]

    def positions(self, inner, kw, input_ids, valid, start, visual) -> Tensor:
        """(B, L, 3): ``position_ids`` as generate passes them ((4, B, L): a text row, then t, h, w), as (3, B, L),
        or as 2-D text ids; else ``get_rope_index`` for a prompt with images or videos; else text continuing at
        ``start`` on all three axes."""
        bsz, seq = valid.shape
        pos = kw.get("position_ids")
        if pos is not None:
            if pos.dim() == 3 and pos.shape[0] == 4:
                pos = pos[1:]
            elif pos.dim() == 2:
                pos = pos[None].expand(3, -1, -1)
            elif not (pos.dim() == 3 and pos.shape[0] == 3):
                raise ValueError(
                    f"apply_restore: position_ids must be (3, B, L) or (4, B, L) M-RoPE ids or (B, L) text ids, got "
                    f"{tuple(pos.shape)}"
                )
            return pos.to(valid.device).long().expand(3, bsz, seq).permute(1, 2, 0)
        if visual:
            return self._rope_index(inner, kw, input_ids, valid, start)
        text = torch.arange(seq, device=valid.device)[None, :] + (0 if start is None else start[:, None])
        return text.expand(bsz, seq)[..., None].expand(bsz, seq, 3)

    def _rope_index(self, inner, kw, input_ids, valid, start) -> Tensor:
        if input_ids is None or kw.get("mm_token_type_ids") is None:
            raise ValueError(
                "apply_restore: a Qwen prompt with images or videos needs input_ids and mm_token_type_ids (the "
                "processor returns both), or explicit position_ids, to compute the M-RoPE ids of the full prompt"
            )
        if start is not None:
            raise ValueError(
                "apply_restore: images or videos after a filled cache need explicit position_ids (get_rope_index "
                "numbers a prompt from 0)"
            )
        extra = {} if kw.get("second_per_grid_ts") is None else {"second_per_grid_ts": kw["second_per_grid_ts"]}
        pos, _ = inner.get_rope_index(
            input_ids, mm_token_type_ids=kw["mm_token_type_ids"], image_grid_thw=kw.get("image_grid_thw"),
            video_grid_thw=kw.get("video_grid_thw"), attention_mask=kw.get("attention_mask"), **extra,
        )
        return pos.to(valid.device).long().permute(1, 2, 0)

    def model_position_ids(self, positions: Tensor) -> Tensor:
        return positions.permute(2, 0, 1)  # (3, B, L): t, h, w rows, no text row (no packed sequences)

    def distance_table(self, inner, size, device) -> Tensor:
        inv_freq = self.language_model(inner).rotary_emb.inv_freq
        return rope_decay_tables(size, inv_freq.to(device), self.axis_of_freq(inner).to(device))

    def forward_overrides(self, inner, short, keys) -> dict:
        if short.has_visual:
            # The patched forward always passes position_ids; rope_deltas is kept true for code that reads it
            # (transformers' rule: next position = cache length + rope_deltas), so against the SHORTENED cache.
            inner.rope_deltas = (keys.next_pos - keys.valid.sum(1))[:, None]
        return {}


def rotary_axis_of_freq(rotary: torch.nn.Module, mrope_section) -> Tensor:
    """The axis (0 = t, 1 = h, 2 = w) each rotary frequency of a transformers M-RoPE text model turns with, read off
    the model's own code: the rotary module's sines for a position that is 1 on one axis and 0 on the others are
    non-zero exactly at that axis' frequencies (0 < inv_freq <= 1). Newer transformers recompose the per-axis
    tables inside the rotary module; older Qwen2.5-VL code does it in the attention with the modeling module's
    ``apply_multimodal_rotary_pos_emb``, which is then applied to a query whose rotation is its sine."""
    f = rotary.inv_freq.shape[0]
    pos = torch.eye(3, dtype=torch.long, device=rotary.inv_freq.device)[:, :, None]  # (3 axes, B = 3 probes, L = 1)
    x = torch.zeros(1, dtype=torch.float32, device=pos.device)
    cos, sin = rotary(x, pos)
    if sin.dim() == 4:  # (3, B, L, 2F): per-axis tables, recomposed in the attention
        recompose = getattr(sys.modules[type(rotary).__module__], "apply_multimodal_rotary_pos_emb", None)
        if recompose is None:
            raise ValueError(f"apply_restore: cannot tell how {type(rotary).__name__} lays out mrope_section")
        q = torch.cat([torch.zeros(f), torch.ones(f)]).to(sin)[None, None, None, :]  # its rotation is -sin
        sin = -recompose(q, q, cos, sin, list(mrope_section), unsqueeze_dim=1)[0][:, 0]
    on = sin[:, 0, :f] != 0  # (probe axis, frequency)
    if not bool((on.sum(0) == 1).all()):
        raise ValueError(f"apply_restore: {type(rotary).__name__} does not turn each frequency with one axis")
    return on.long().argmax(0)
