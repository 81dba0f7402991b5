"""Tiny random-weight LLaVA checkpoint, made offline (never downloaded): a byte-level BPE tokenizer trained on a
few sentences, a 2-layer Llama (head_dim 32, which vLLM's CPU attention kernel needs for the plain-vLLM baseline,
GQA 4/2) and a 2-layer CLIP tower on 32x32 images with 8x8 patches (16 visual tokens per image)."""
from __future__ import annotations

import os

import torch

IMAGE_SIDE = 32
FULL_TOKENS = 16  # (32 / 8)**2 patches; the "default" feature strategy drops CLS


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["The quick brown fox jumps over the lazy dog. " * 3,
              "USER: What is in the image? ASSISTANT: A cat sitting on a mat.",
              "hello world, this is a tiny tokenizer for testing vllm offline."] * 50
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=990, special_tokens=["<s>", "</s>", "<unk>", "<pad>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})


def make_tiny_llava(out_dir: str) -> str:
    """Writes the checkpoint (config, safetensors, tokenizer, processor) into out_dir/tiny-llava; returns it."""
    from safetensors.torch import load_file, save_file
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    path = os.path.join(out_dir, "tiny-llava")
    torch.manual_seed(0)
    tok = _tokenizer()
    text = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=0, eos_token_id=1, pad_token_id=3, tie_word_embeddings=False)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIDE, patch_size=8, projection_dim=32)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_select_strategy="default", vision_feature_layer=-2, projector_hidden_act="gelu")
    LlavaForConditionalGeneration(cfg).to(torch.float32).save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIDE},
                                crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1,
                   chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}").save_pretrained(path)
    # transformers 5 saves the CLIP tower as `vision_tower.*`; llava-hf checkpoints (and vLLM's loader) use
    # `vision_tower.vision_model.*`: write the keys the way real checkpoints have them.
    weights = os.path.join(path, "model.safetensors")
    sd = load_file(weights)
    sd = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
          for k, v in sd.items()}
    save_file(sd, weights, metadata={"format": "pt"})
    return path


def images(count: int, seed: int = 0):
    """`count` random RGB PIL images of the tower's size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)) for _ in range(count)]


# The prompts every test uses: one image, two images, text only.
PROMPTS = [
    ("USER: <image>\nWhat is in the image? ASSISTANT:", 1),
    ("USER: <image><image>\nWhat is in the image? ASSISTANT:", 2),
    ("hello world, this is", 0),
]
