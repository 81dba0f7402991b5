"""The shortened prompt: one path for every forward (a prefill with images or videos, a text-only prompt, a decode
step), so that the tokens the language model sees and the per-key state beside the KV cache are built one way.

Each visual item's N placeholder tokens become ``settings.budget(N)`` reduced tokens at the positions their
representatives had; text tokens stay. Rows then left-align to the longest row, and columns that are padding in
every row are dropped (a text-only row batched with an image row does not keep the batch at the unreduced length).
A forward without visual items (a decode step, a text-only prompt) passes through with its columns as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .adapter import VisualInput
from .settings import RestoreSettings
from .state import KeyState
from .visual_reduction import reduce_like, reduce_tokens


@dataclass
class ShortenedPrompt:
    """What the language model sees for one forward, and the keys it appends to the cache."""

    inputs_embeds: Tensor  # (B, L', D)
    valid: Tensor  # (B, L') bool: not padding
    modality: Tensor  # (B, L') int64: index of the VisualInput a token came from, -1 for text
    extras: dict  # name -> (B, L', ...) reduced per-token extras at visual tokens, zeros elsewhere
    keys: KeyState  # log(size) per key, full-prompt positions, visual flags, next position, reduced rows
    has_visual: bool  # this forward carried visual items (a prefill, not a decode step)
    tokens_before: int = 0  # visual tokens of this forward before reduction
    tokens_after: int = 0  # and after


@dataclass
class _Item:
    row: int
    cols: Tensor  # (N,) sequence column of each placeholder, in feature order
    features: Tensor  # (N, D)
    extras: dict  # name -> (N, ...)
    modality: int


def _locate(index: int, vis: VisualInput) -> list:
    """The items of one modality with the columns of their placeholders. An item's placeholders need not be
    contiguous (Qwen3-VL puts timestamp text between a video's frames) but must lie in one row."""
    lengths = [int(f.shape[0]) for f in vis.features]
    rows, cols = vis.placeholder.nonzero(as_tuple=True)
    if rows.numel() != sum(lengths):
        raise ValueError(
            f"apply_restore: the prompt has {rows.numel()} {vis.modality} placeholder tokens but the "
            f"{vis.modality}s give {sum(lengths)} features ({lengths})"
        )
    items, start = [], 0
    for i, n in enumerate(lengths):
        if n == 0:  # an item without tokens has nothing to reduce or place
            continue
        r = int(rows[start])
        if int(rows[start + n - 1]) != r:
            raise ValueError(
                f"apply_restore: the placeholder tokens of {vis.modality} {i} span several prompts of the batch"
            )
        extras = {k: v[i] for k, v in vis.extras.items()}
        items.append(_Item(r, cols[start:start + n], vis.features[i], extras, index))
        start += n
    return items


def _gather(t: Tensor, index: Optional[Tensor]) -> Tensor:
    """t (B, L, ...) at columns ``index`` (B, L'); ``index`` None: all columns as they are."""
    if index is None:
        return t
    shape = index.shape + t.shape[2:]
    return t.gather(1, index.view(*index.shape, *([1] * (t.dim() - 2))).expand(shape))


def _layout(keep: Tensor, valid: Tensor, shortened: bool):
    """(index, filled), both (B, L'): the source column of each output token and whether it holds one. The kept
    tokens of each row are right-aligned (left padding), then the columns that are padding in every row dropped.
    (None, None): every column as it is, for a forward that shortened nothing (decode steps, text-only prompts:
    no device sync there)."""
    if not shortened:
        return None, None
    bsz = keep.shape[0]
    counts = keep.sum(1)
    length = int(counts.max())
    kr, kc = keep.nonzero(as_tuple=True)
    slot = (keep.long().cumsum(1) - 1 + (length - counts)[:, None])[kr, kc]
    index = torch.zeros(bsz, length, dtype=torch.long, device=keep.device)
    filled = torch.zeros(bsz, length, dtype=torch.bool, device=keep.device)
    index[kr, slot] = kc
    filled[kr, slot] = True
    used = (valid.gather(1, index) & filled).any(0)
    if bool(used.any()):  # a batch of nothing but padding keeps its columns (every key is masked anyway)
        index, filled = index[:, used], filled[:, used]
    return index, filled


def shorten_prompt(
    embeds: Tensor,
    valid: Tensor,
    positions: Tensor,
    visual: list,
    settings: RestoreSettings,
    next_pos: Tensor,
) -> ShortenedPrompt:
    """embeds (B, L, D) of the full prompt (placeholders included), valid (B, L), full-prompt positions (B, L[, S]),
    the visual inputs of this forward (may be empty), next_pos (B,) -> the shortened prompt."""
    bsz, seq, _ = embeds.shape
    dev = embeds.device
    items = [item for i, vis in enumerate(visual) for item in _locate(i, vis)]
    modality = torch.full((bsz, seq), -1, dtype=torch.long, device=dev)
    reduced_rows = torch.zeros(bsz, dtype=torch.bool, device=dev)
    extras = {}
    tokens_after = 0
    keep = size = size_first = None  # per-token buffers of a forward that reduces something
    if items:
        embeds = embeds.clone()
        keep = torch.ones(bsz, seq, dtype=torch.bool, device=dev)
        for vis in visual:
            keep &= ~vis.placeholder.to(dev)
        size = torch.ones(bsz, seq, dtype=torch.float32, device=dev)
        size_first = torch.ones(bsz, seq, dtype=torch.float32, device=dev)
    # Items of equal shape (and the same extras) reduce in one batched call, whatever their modality.
    groups = {}
    for i, item in enumerate(items):
        groups.setdefault((tuple(item.features.shape), tuple(sorted(item.extras))), []).append(i)
    for ((n, _), names), idx in sorted(groups.items()):
        feats = torch.stack([items[i].features for i in idx]).to(dev, embeds.dtype)
        red = reduce_tokens(feats, settings)
        k = red.position.shape[1]
        tokens_after += k * len(idx)
        rows = torch.tensor([items[i].row for i in idx], device=dev)[:, None].expand(-1, k)
        cols = torch.stack([items[i].cols.to(dev) for i in idx]).gather(1, red.position.to(dev))
        embeds[rows, cols] = red.tokens.to(embeds.dtype)
        keep[rows, cols] = True
        modality[rows, cols] = torch.tensor([items[i].modality for i in idx], device=dev)[:, None]
        size[rows, cols] = red.size.to(dev, torch.float32)
        size_first[rows, cols] = n / k
        reduced_rows[rows[:, 0]] = True
        for name in names:
            values = reduce_like(torch.stack([items[i].extras[name] for i in idx]).to(dev), red)
            if name not in extras:
                extras[name] = values.new_zeros((bsz, seq) + values.shape[2:])
            extras[name][rows, cols] = values

    index, filled = _layout(keep, valid, bool(items))
    out_valid = _gather(valid, index)
    if filled is not None:
        out_valid = out_valid & filled  # the left-padding slots of shorter rows
    pos_valid = out_valid.view(*out_valid.shape, *([1] * (positions.dim() - 2)))
    log_size = log_size_first = torch.where(out_valid, 0.0, -math.inf).float()  # text: size 1; padding: -inf
    if items and settings.calibrate:
        log_size = log_size + _gather(size, index).log()
        log_size_first = log_size_first + _gather(size_first, index).log()
    out_modality = _gather(modality, index)
    keys = KeyState(
        log_size,
        log_size_first,
        torch.where(pos_valid, _gather(positions, index), 0),
        (out_modality >= 0) & out_valid,
        next_pos,
        reduced_rows,
        bool(items),
    )
    return ShortenedPrompt(
        _gather(embeds, index),
        out_valid,
        out_modality,
        {name: _gather(t, index) for name, t in extras.items()},
        keys,
        bool(items),
        sum(item.features.shape[0] for item in items),
        tokens_after,
    )
