"""The models and prompts ``python -m restore_ext.demo`` runs: small random-weight LLaVA, Qwen2.5-VL and Qwen3-VL
models with one 576-token image, or a local checkpoint. Each builder returns ``(model, inputs, processor)``."""
from __future__ import annotations

import torch

FAMILIES = ("llava", "qwen2_5_vl", "qwen3_vl")
VOCAB, IMAGE, VIDEO, VISION_START, VISION_END = 4096, 32, 33, 34, 35
GRID = 48  # Qwen: a 48 x 48 patch image -> 24 x 24 = 576 tokens after the 2 x 2 merger, as LLaVA-1.5's 576


def _layout(generator):
    """LLaVA-1.5's layout: ~35 system tokens, the image, a ~15-token question."""
    return torch.randint(100, VOCAB, (35,), generator=generator), torch.randint(100, VOCAB, (15,), generator=generator)


def random_llava(device, dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
        vocab_size=VOCAB, max_position_embeddings=4096, pad_token_id=0,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    g = torch.Generator().manual_seed(1)
    system, question = _layout(g)
    ids = torch.cat([system, torch.full((576,), IMAGE), question])[None]
    from restore_ext.visualize import CLIP_MEAN, CLIP_STD, sample_image

    # a synthetic scene (flat sky, hills, houses), normalised as LLaVA-1.5's processor does, so the picture of
    # the reduction shows something a reader can recognise
    image = torch.from_numpy(sample_image(336)).permute(2, 0, 1)[None].float() / 255
    pixel_values = (image - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return model, dict(input_ids=ids.to(device), pixel_values=pixel_values.to(device, dtype)), None


def random_qwen(family, device, dtype):
    """Qwen2.5-VL or Qwen3-VL shaped like the LLaVA demo model (8 layers, width 512, head_dim 64: M-RoPE sections
    [8, 12, 12] in chunks / [12, 10, 10] interleaved, the real models' proportions), one 576-token image."""
    import transformers

    text = dict(
        vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = dict(hidden_size=128, intermediate_size=256, num_heads=4, depth=2, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=512)
    ids = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END)
    if family == "qwen2_5_vl":
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]}
        vc = transformers.Qwen2_5_VLVisionConfig(patch_size=14, window_size=112, fullatt_block_indexes=[1], **vision)
        config = transformers.Qwen2_5_VLConfig(vision_config=vc.to_dict(), text_config=text, **ids)
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    else:
        text.update(head_dim=64, rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                  "mrope_section": [12, 10, 10], "mrope_interleaved": True})
        vc = transformers.Qwen3VLVisionConfig(patch_size=16, num_position_embeddings=GRID * GRID,
                                              deepstack_visual_indexes=[0, 1], **vision)
        config = transformers.Qwen3VLConfig(vision_config=vc.to_dict(), text_config=text, **ids)
        cls = transformers.Qwen3VLForConditionalGeneration
    torch.manual_seed(0)
    model = cls(config).to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # random weights: never stop early
    g = torch.Generator().manual_seed(1)
    system, question = _layout(g)
    n = (GRID // 2) ** 2
    input_ids = torch.cat([system, torch.tensor([VISION_START]), torch.full((n,), IMAGE), torch.tensor([VISION_END]),
                           question])[None]
    patch = config.vision_config.patch_size
    pixel_values = torch.randn(GRID * GRID, 3 * 2 * patch * patch, generator=g)
    inputs = dict(
        input_ids=input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device),
        mm_token_type_ids=(input_ids == IMAGE).long().to(device), pixel_values=pixel_values.to(device, dtype),
        image_grid_thw=torch.tensor([[1, GRID, GRID]], device=device),
    )
    return model, inputs, None


def random_model(family, device, dtype):
    if family == "llava":
        return random_llava(device, dtype)
    if family in ("qwen2_5_vl", "qwen3_vl"):
        return random_qwen(family, device, dtype)
    raise ValueError(f"restore_ext.demo: --family must be one of {', '.join(FAMILIES)}, got {family!r}")


def _picture(image_path):
    try:
        from PIL import Image
    except ImportError as e:
        raise SystemExit("restore_ext.demo --model needs pillow for the image processor: pip install pillow") from e
    if image_path:
        return Image.open(image_path).convert("RGB")
    x = torch.linspace(0, 255, 336)  # a synthetic picture, so the demo needs no download
    h, w = x[None, :].expand(336, 336), x[:, None].expand(336, 336)
    return Image.fromarray(torch.stack([h, w, h.flip(1)], -1).to(torch.uint8).numpy())


def local_model(path, device, dtype, image_path, question):
    """A local checkpoint and its processor (LLaVA: the LLaVA-1.5 prompt; Qwen: the processor's chat template)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image = _picture(image_path)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    if model.config.model_type in ("qwen2_5_vl", "qwen3_vl"):
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt").to(device)
    else:
        inputs = processor(images=image, text=f"USER: <image>\n{question} ASSISTANT:", return_tensors="pt").to(device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model, dict(inputs), processor


def visual_mask(model, input_ids):
    """(B, L) bool: the image (and video) placeholder tokens of the full prompt."""
    mask = input_ids == model.config.image_token_id
    video = getattr(model.config, "video_token_id", None)
    return mask if video is None else mask | (input_ids == video)
