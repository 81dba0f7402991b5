"""Tiny random-weight Qwen2.5-VL checkpoint, made offline (never downloaded): a byte-level BPE tokenizer with
Qwen's vision special tokens, a 2-layer Qwen2 text model (hidden 128, 4 query / 2 key-value heads, head_dim 32,
which vLLM's CPU attention kernel needs for the plain-vLLM baseline; M-RoPE sections [4, 6, 6] in chunks over its
16 rotary frequencies) and a 2-block vision tower (patch 4, 2 x 2 merge, window attention in block 0). Every image
is resized to 32 x 32 pixels: an 8 x 8 patch grid, N = 16 visual tokens after the merger, on a 4 x 4 (h, w) grid."""
from __future__ import annotations

import os

import torch

IMAGE_SIDE = 32
FULL_TOKENS = 16
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["The quick brown fox jumps over the lazy dog. " * 3,
              "USER: What is in the image? ASSISTANT: A cat sitting on a mat.",
              "hello world, this is a tiny tokenizer for testing vllm offline."] * 50
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=990, special_tokens=SPECIAL,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={"image_token": "<|image_pad|>",
                                                         "video_token": "<|video_pad|>"})


def make_tiny_qwen2_5_vl(out_dir: str) -> str:
    """Writes the checkpoint (config, safetensors, tokenizer, processor) into out_dir/tiny-qwen2_5_vl; returns it."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    path = os.path.join(out_dir, "tiny-qwen2_5_vl")
    torch.manual_seed(0)
    tok = _tokenizer()
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    # window 16 px = 2 x 2 merge units per window; block 1 attends over the whole image
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, in_channels=3, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128, window_size=16,
                  fullatt_block_indexes=[1], tokens_per_second=2)
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32)
    model.save_pretrained(path)
    pixels = IMAGE_SIDE * IMAGE_SIDE
    size = {"shortest_edge": pixels, "longest_edge": pixels}
    images = Qwen2VLImageProcessor(size=size, patch_size=4, merge_size=2, temporal_patch_size=2)
    videos = Qwen2VLVideoProcessor(size=size, patch_size=4, merge_size=2, temporal_patch_size=2)
    Qwen2_5_VLProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}").save_pretrained(path)
    return path


def images(count: int, seed: int = 0):
    """`count` random RGB PIL images of the processor's size (no resize)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)) for _ in range(count)]


_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# The prompts every Qwen test uses: one image, two images, text only.
PROMPTS = [
    (f"USER: {_IMAGE}What is in the image? ASSISTANT:", 1),
    (f"USER: {_IMAGE}{_IMAGE}What is in the image? ASSISTANT:", 2),
    ("hello world, this is", 0),
]
