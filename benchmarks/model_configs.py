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
