"""The models bench_end_to_end.py times: LLaVA-1.5-7B and Qwen2.5-VL-7B shapes at any scale, random weights from
the config (nothing is downloaded), one image prompt each, and the baselines' shortening hook for each.

--scale s multiplies every width and depth by s and keeps head dims (LLaVA: 64 vision / 128 text; Qwen2.5-VL: 80 /
128), the key/value head share, the vocabulary and the token counts. Both prompts carry 576 image tokens (LLaVA:
a 336 px image, 24 x 24 patches; Qwen2.5-VL: a 672 px image, 48 x 48 patches of 14 merged 2 x 2) between 35
system and 15 question tokens, so the 64 / 128 / 192 budgets cut the same share of each.
"""
import dataclasses
import os
import sys
from typing import Callable, List

import torch

from model_configs import llava15_config, qwen2_5_vl_config

SYSTEM, QUESTION, IMAGE_TOKENS = 35, 15, 576
MODELS = ("llava15", "qwen2_5_vl")


QWEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
QWEN_GRID = 48  # patches per side: 48 x 48 patches of 14 px, merged 2 x 2 -> 576 tokens


@dataclasses.dataclass
class BenchModel:
    title: str  # e.g. "LLaVA-1.5-7B shapes"
    stem: str  # file name part
    model: torch.nn.Module
    inputs: dict
    prompt: List[int]  # text before, image tokens, text after
    vision_in: torch.nn.Module  # the clock's "vision" stage starts at this module's input ...
    vision_out: torch.nn.Module  # ... and ends at this one's output
    shorten: Callable  # reduce_fn -> forward pre-hook (with kwargs) on the inner model for the baselines


def _instantiate(cls, config, device, dtype):
    with torch.device("meta"):  # count the parameters without allocating them
        params = sum(p.numel() for p in cls(config).parameters())
    need = params * torch.finfo(dtype).bits // 8
    if torch.device(device).type == "cpu" and need > 0.8 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):
        sys.exit(f"bench_end_to_end: the weights alone need {need / 2**30:.1f} GiB at this scale; "
                 "use a smaller --scale on this machine")
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: a 7B model in float32 first would not fit
    try:
        with torch.device(device):
            return cls(config).eval()
    finally:
        torch.set_default_dtype(old)


def build(name: str, scale: float, device, dtype) -> BenchModel:
    g = torch.Generator().manual_seed(1)
    system = torch.randint(100, 31000, (SYSTEM,), generator=g)
    question = torch.randint(100, 31000, (QUESTION,), generator=g)
    if name == "llava15":
        from transformers import LlavaForConditionalGeneration

        config = llava15_config(scale)
        model = _instantiate(LlavaForConditionalGeneration, config, device, dtype)
        ids = torch.cat([system, torch.full((IMAGE_TOKENS,), config.image_token_id), question])[None]
        inputs = dict(input_ids=ids.to(device), pixel_values=torch.randn(1, 3, 336, 336, generator=g).to(device, dtype))
        return BenchModel("LLaVA-1.5-7B shapes", "llava15", model, inputs, [SYSTEM, IMAGE_TOKENS, QUESTION],
                          model.model.vision_tower, model.model.multi_modal_projector, Shorten)
    if name == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration

        config = qwen2_5_vl_config(scale, pad_token_id=151643, **QWEN_IDS)
        model = _instantiate(Qwen2_5_VLForConditionalGeneration, config, device, dtype)
        image = torch.cat([torch.tensor([QWEN_IDS["vision_start_token_id"]]),
                           torch.full((IMAGE_TOKENS,), QWEN_IDS["image_token_id"]),
                           torch.tensor([QWEN_IDS["vision_end_token_id"]])])
        ids = torch.cat([system, image, question])[None]
        patch = config.vision_config.patch_size
        pixels = torch.randn(QWEN_GRID * QWEN_GRID, 3 * 2 * patch * patch, generator=g)
        inputs = dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                      mm_token_type_ids=(ids == QWEN_IDS["image_token_id"]).long().to(device),
                      pixel_values=pixels.to(device, dtype),
                      image_grid_thw=torch.tensor([[1, QWEN_GRID, QWEN_GRID]], device=device))
        return BenchModel("Qwen2.5-VL-7B shapes", "qwen2_5_vl", model, inputs, [SYSTEM + 1, IMAGE_TOKENS, QUESTION + 1],
                          model.model.visual, model.model.visual, ShortenQwen)
    raise ValueError(f"bench_end_to_end: --model must be one of {', '.join(MODELS)}, got {name!r}")


class Shorten:
    """Forward pre-hook on the inner model for the baselines: vision tower, then `reduce_fn` (M, N, D) -> (M, K, D),
    then the prompt with its image placeholders replaced by the K tokens, as plain inputs_embeds (positions
    0..L'-1, the model's own SDPA attention): what pruning and merging methods feed the LLM."""

    def __init__(self, reduce_fn):
        self.reduce_fn = reduce_fn

    def features(self, inner, kwargs):
        return inner.get_image_features(pixel_values=kwargs["pixel_values"], return_dict=True).pooler_output

    def __call__(self, inner, args, kwargs):
        if kwargs.get("pixel_values") is None:
            return None  # decode steps
        ids = kwargs["input_ids"]
        tokens = self.reduce_fn(torch.stack(list(self.features(inner, kwargs))))[0]
        embeds = inner.get_input_embeddings()(ids)[0]
        where = (ids[0] == inner.config.image_token_id).nonzero()[:, 0]
        start, end = int(where[0]), int(where[-1]) + 1
        short = torch.cat([embeds[:start], tokens.to(embeds.dtype), embeds[end:]])[None]
        kwargs.update(input_ids=None, pixel_values=None, inputs_embeds=short, attention_mask=None, position_ids=None)
        return args, kwargs


class ShortenQwen(Shorten):
    """Qwen2.5-VL's form: the same shortened prompt, with M-RoPE positions 0..L'-1 on all three axes (text-like, as
    the LLaVA baselines number theirs) and the model's decode offset set to continue from L'."""

    def features(self, inner, kwargs):
        out = inner.get_image_features(kwargs["pixel_values"], kwargs["image_grid_thw"], return_dict=True)
        return out.pooler_output

    def __call__(self, inner, args, kwargs):
        out = super().__call__(inner, args, kwargs)
        if out is None:
            return None
        short = kwargs["inputs_embeds"]
        length = short.shape[1]
        kwargs.update(position_ids=torch.arange(length, device=short.device).view(1, 1, length).expand(3, 1, length),
                      image_grid_thw=None, mm_token_type_ids=None)
        inner.rope_deltas = torch.zeros(1, 1, dtype=torch.long, device=short.device)
        return args, kwargs
