"""Model configs the benchmarks build random-weight models from (nothing is downloaded). Imports only
transformers, so both the main venv (bench_end_to_end.py) and the vLLM venv (bench_vllm.py) can use it."""


def llava15_config(scale: float):
    """LLaVA-1.5-7B's config with widths and depths times `scale` (head dims kept)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    def width(full, head):
        return max(head, round(full * scale / head) * head)

    vh, th = width(1024, 64), width(4096, 128)
    vision = CLIPVisionConfig(hidden_size=vh, intermediate_size=width(4096, 64), num_attention_heads=vh // 64,
                              num_hidden_layers=max(2, round(24 * scale)), image_size=336, patch_size=14,
                              projection_dim=768)
    text = LlamaConfig(hidden_size=th, intermediate_size=width(11008, 16), num_attention_heads=th // 128,
                       num_key_value_heads=th // 128, num_hidden_layers=max(1, round(32 * scale)), vocab_size=32000,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=0)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=32000 - 1, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", pad_token_id=0)


def qwen2_5_vl_config(scale: float, **token_ids):
    """Qwen2.5-VL-7B's config with widths and depths times `scale` (head dims 128 text / 80 vision, GQA 7:1,
    M-RoPE sections, patch 14, 2 x 2 merge and 112-pixel windows kept); `token_ids` are the tokenizer's special ids."""
    from transformers import Qwen2_5_VLConfig

    def width(full, head):
        return max(head, round(full * scale / head) * head)

    th, vh = width(3584, 128), width(1280, 80)
    depth = max(2, round(32 * scale))
    text = dict(vocab_size=152064, hidden_size=th, intermediate_size=width(18944, 16),
                num_hidden_layers=max(1, round(28 * scale)), num_attention_heads=th // 128,
                num_key_value_heads=max(1, round(th // 128 / 7)), max_position_embeddings=32768, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                tie_word_embeddings=False)
    # the real model attends over the whole image in the last block of each quarter of its 32 blocks and within
    # windows elsewhere; a tower under 8 blocks keeps that ratio roughly with one full block, the last
    full = sorted({(k + 1) * depth // 4 - 1 for k in range(4)}) if depth >= 8 else [depth - 1]
    vision = dict(depth=depth, hidden_size=vh, intermediate_size=width(3420, 4), num_heads=vh // 80, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=th, window_size=112,
                  fullatt_block_indexes=full, tokens_per_second=2)
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **token_ids)
