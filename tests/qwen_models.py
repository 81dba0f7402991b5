"""Tiny offline Qwen2.5-VL and Qwen3-VL models (random weights, built from configs, never downloaded) and their
inputs, built directly without a processor: token ids with the vision start / placeholder / end tokens,
``mm_token_type_ids``, ``image_grid_thw`` / ``video_grid_thw`` and random pixel patches of the right shape.

Sizes: vision tower 2-3 blocks of width 32 with patch 4 and a 2 x 2 spatial merge, so an image of ``(h, w)``
patches gives N = h * w / 4 LLM tokens; text model 2 layers, hidden 64, 4 query heads over 2 key/value heads,
head_dim 16 (8 rotary frequencies: M-RoPE sections [2, 3, 3] in chunks for Qwen2.5-VL, [4, 2, 2] interleaved
for Qwen3-VL). Qwen3-VL's DeepStack injects features of vision blocks 0 and 1 after decoder layers 0 and 1.
A forward of a few hundred tokens takes well under a second on one CPU core.
"""
import inspect
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple, Union

import torch

PAD, IMAGE, VIDEO, VISION_START, VISION_END = 0, 100, 101, 102, 103
TIMESTAMP = 104  # stands for Qwen3-VL's "<t seconds>" text before each video frame
VOCAB = 128
PATCH, TEMPORAL_PATCH, MERGE = 4, 2, 2
FAMILIES = ("qwen2_5_vl", "qwen3_vl")

Part = Union[Sequence[int], Tuple[str, Tuple[int, ...]]]  # text ids, ("image", (h, w)) or ("video", (t, h, w))


def qwen_api() -> bool:
    """Whether the installed transformers numbers Qwen prompts from mm_token_type_ids (what the integration needs)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    return "mm_token_type_ids" in inspect.signature(Qwen2_5_VLModel.get_rope_index).parameters


def tiny_config(family: str, **text_kwargs):
    """Config of a tiny random-weight model of ``family``; ``text_kwargs`` override text-config fields."""
    import transformers
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig

    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END)
    vision = dict(hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=PATCH,
                  spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL_PATCH)
    if family == "qwen2_5_vl":
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        text.update(text_kwargs)
        vision["out_hidden_size"] = text["hidden_size"]
        # window 16 px = 2 x 2 merge units per window; block 1 attends over the whole image
        vc = Qwen2_5_VLVisionConfig(depth=2, window_size=16, fullatt_block_indexes=[1],
                                                 tokens_per_second=2, **vision)
        return transformers.Qwen2_5_VLConfig(vision_config=vc.to_dict(), text_config=text, **ids)
    if family == "qwen3_vl":
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [4, 2, 2], "mrope_interleaved": True})
        text.update(text_kwargs)
        vision["out_hidden_size"] = text["hidden_size"]
        vc = Qwen3VLVisionConfig(depth=3, num_position_embeddings=64, deepstack_visual_indexes=[0, 1],
                                              **vision)
        return transformers.Qwen3VLConfig(vision_config=vc.to_dict(), text_config=text, **ids)
    raise ValueError(f"tiny_config: family must be one of {FAMILIES}, got {family!r}")


def tiny_model(family: str, seed: int = 0, **text_kwargs):
    import transformers

    cls = {"qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
           "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
    torch.manual_seed(seed)
    model = cls(tiny_config(family, **text_kwargs)).eval()
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model


@dataclass
class _Row:
    ids: List[int] = field(default_factory=list)
    types: List[int] = field(default_factory=list)


def _tokens(family: str, part: Part, row: _Row, grids: dict) -> None:
    if not (isinstance(part, tuple) and len(part) == 2 and isinstance(part[0], str)):
        row.ids += list(part)
        row.types += [0] * len(part)
        return
    kind, shape = part
    if kind == "image":
        h, w = shape
        t, token, mm = 1, IMAGE, 1
    elif kind == "video":
        t, h, w = shape
        token, mm = VIDEO, 2
    else:
        raise ValueError(f"unknown part {part!r}")
    if h % MERGE or w % MERGE:
        raise ValueError(f"{kind} grid (h, w) must be multiples of {MERGE}, got {(h, w)}")
    grids[kind].append((t, h, w))
    per_frame = h * w // (MERGE * MERGE)
    # Qwen3-VL puts a timestamp and its own start / end tokens around every video frame; Qwen2.5-VL one block
    frames = t if (kind == "video" and family == "qwen3_vl") else 1
    for _ in range(frames):
        if frames > 1 or kind == "video" and family == "qwen3_vl":
            row.ids.append(TIMESTAMP)
            row.types.append(0)
        n = per_frame * (t // frames)
        row.ids += [VISION_START] + [token] * n + [VISION_END]
        row.types += [0] + [mm] * n + [0]


def pixels(grid: Sequence[Tuple[int, int, int]], generator: torch.Generator) -> torch.Tensor:
    """Random patches for ``grid`` rows (t, h, w): ((sum t*h*w), 3 * temporal_patch * patch * patch)."""
    rows = sum(t * h * w for t, h, w in grid)
    return torch.randn(rows, 3 * TEMPORAL_PATCH * PATCH * PATCH, generator=generator)


def make_inputs(family: str, *rows: Sequence[Part], seed: int = 1) -> dict:
    """Model inputs for a batch of prompts, left-padded to one length.

    Each row is a list of parts: a list of text ids, ``("image", (h, w))`` or ``("video", (t, h, w))`` in
    patches (h, w multiples of 2; t frames of the vision tower, i.e. already divided by the temporal patch).
    """
    g = torch.Generator().manual_seed(seed)
    grids = {"image": [], "video": []}
    built = []
    for parts in rows:
        row = _Row()
        for part in parts:
            _tokens(family, part, row, grids)
        built.append(row)
    width = max(len(r.ids) for r in built)
    b = len(built)
    input_ids = torch.full((b, width), PAD, dtype=torch.long)
    types = torch.zeros(b, width, dtype=torch.long)
    mask = torch.zeros(b, width, dtype=torch.long)
    for i, r in enumerate(built):
        input_ids[i, width - len(r.ids):] = torch.tensor(r.ids)
        types[i, width - len(r.ids):] = torch.tensor(r.types)
        mask[i, width - len(r.ids):] = 1
    out = dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=types)
    if grids["image"]:
        out["image_grid_thw"] = torch.tensor(grids["image"])
        out["pixel_values"] = pixels(grids["image"], g)
    if grids["video"]:
        out["video_grid_thw"] = torch.tensor(grids["video"])
        out["pixel_values_videos"] = pixels(grids["video"], g)
        if family == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.ones(len(grids["video"]))
    return out


def split_rows(family: str, rows: Sequence[Sequence[Part]], seed: int = 1) -> List[dict]:
    """Each row alone, with the same pixels as in the batch ``make_inputs(family, *rows, seed=seed)``."""
    batch = make_inputs(family, *rows, seed=seed)
    singles, cursor = [], {"image": 0, "video": 0}
    for parts in rows:
        single = make_inputs(family, parts, seed=seed)
        for kind, pix in (("image", "pixel_values"), ("video", "pixel_values_videos")):
            if pix in single:
                n = single[pix].shape[0]
                single[pix] = batch[pix][cursor[kind]:cursor[kind] + n]
                cursor[kind] += n
        singles.append(single)
    return singles


def visual_token_count(inputs: dict) -> int:
    ids = inputs["input_ids"]
    return int(((ids == IMAGE) | (ids == VIDEO)).sum())


def rope_positions(model, inputs: dict) -> torch.Tensor:
    """(3, B, L) position ids of the full prompt from the model's own get_rope_index."""
    kw = {k: inputs.get(k) for k in ("image_grid_thw", "video_grid_thw", "attention_mask", "mm_token_type_ids")}
    if "second_per_grid_ts" in inputs:
        kw["second_per_grid_ts"] = inputs["second_per_grid_ts"]
    pos, _ = model.model.get_rope_index(inputs["input_ids"], **kw)
    return pos


def greedy(model, inputs: dict, steps: int = 5, **kw):
    """Greedy tokens and per-step logits of ``model.generate``."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             return_dict_in_generate=True, output_logits=True, **kw)
    return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.logits, 1)


def reference_calibrated_attention(q, k, v, log_size=None, q_pos=None, k_pos=None, table=None, causal=True,
                                   scale=None):
    """The op's float64 reference (docs/ops.md §5 / §5b, 1-D or multi-axis positions) with the op's signature and
    output dtype: stands in for the kernel where a test checks the integration's logic rather than the kernel."""
    from restore_ext import reference

    return reference.calibrated_attention(q, k, v, log_size, q_pos, k_pos, table, causal, scale).to(q.dtype)
