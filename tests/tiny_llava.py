"""Tiny random-weight LLaVA models and prompts shared by the transformers integration tests (offline, CPU).

Tiny model: CLIP vision 112 px / patch 14 -> N = 64 visual tokens per image, Llama text model with GQA
(4 query heads over 2 key/value heads), 2 layers, hidden 64. A helper module, not a test module.
"""
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) != 5:
    pytest.skip(f"the integration targets transformers 5.x, found {transformers.__version__}", allow_module_level=True)

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

# transformers 5.x renamed `past_key_values` to `cache` (forward kwarg and output field)
CACHE = "cache" if "cache" in inspect.signature(LlavaForConditionalGeneration.forward).parameters else "past_key_values"
IMAGE = 100  # image placeholder token id
PAD = 0
N = 64  # visual tokens per image of the tiny vision tower


def tiny_config(text_config=None, **text_kwargs):
    vc = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=112, patch_size=14
    )
    tc = text_config or LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=1024,
        pad_token_id=PAD,
        **text_kwargs,
    )
    return LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_id=IMAGE,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=PAD,
    )


def tiny_model(seed=0):
    torch.manual_seed(seed)
    m = LlavaForConditionalGeneration(tiny_config()).eval()
    m.generation_config.pad_token_id = PAD
    return m


def with_cache(out):
    return {CACHE: getattr(out, CACHE)}


def prompt(*parts):
    """prompt([1, 2], 'img', [5, 6]) -> (1, L) ids with N placeholders per 'img'."""
    ids = []
    for p in parts:
        ids += [IMAGE] * N if p == "img" else list(p)
    return torch.tensor([ids])


def images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 112, 112, generator=g)


def left_pad(rows):
    width = max(r.shape[1] for r in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - r.shape[1]:] = r[0]
        mask[i, width - r.shape[1]:] = 1
    return ids, mask


@torch.no_grad()
def greedy(model, ids, pv, mask=None, steps=6, **kw):
    if pv is not None:  # generate would pre-encode an explicit pixel_values=None
        kw["pixel_values"] = pv
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
        do_sample=False, return_dict_in_generate=True, output_logits=True, **kw,
    )
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1)
