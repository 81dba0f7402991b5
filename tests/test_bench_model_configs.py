"""benchmarks/model_configs.py: at scale 1 the configs are the real LLaVA-1.5-7B and Qwen2.5-VL-7B sizes, and a
scaled config keeps what the benchmarks' claims rest on (head dims, M-RoPE sections, 576 visual tokens)."""
import os
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from model_configs import llava15_config, qwen2_5_vl_config  # noqa: E402


def test_llava15_config_full_scale_is_llava_1_5_7b():
    cfg = llava15_config(1.0)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.vocab_size) == \
        (4096, 11008, 32, 32, 32000)
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads) == (1024, 4096, 24, 16)
    assert (v.image_size // v.patch_size) ** 2 == 576


def test_qwen2_5_vl_config_full_scale_is_qwen2_5_vl_7b():
    cfg = qwen2_5_vl_config(1.0)
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads,
            t.num_key_value_heads, t.vocab_size) == (3584, 18944, 28, 28, 4, 152064)
    assert (v.depth, v.hidden_size, v.intermediate_size, v.num_heads, v.out_hidden_size) == (32, 1280, 3420, 16, 3584)
    assert v.fullatt_block_indexes == [7, 15, 23, 31] and v.window_size == 112


@pytest.mark.parametrize("scale", [0.125, 0.25, 0.5])
def test_scaled_configs_keep_head_dims_and_token_counts(scale):
    llava, qwen = llava15_config(scale), qwen2_5_vl_config(scale)
    assert llava.text_config.hidden_size // llava.text_config.num_attention_heads == 128
    assert llava.vision_config.hidden_size // llava.vision_config.num_attention_heads == 64
    assert (llava.vision_config.image_size // llava.vision_config.patch_size) ** 2 == 576
    t, v = qwen.text_config, qwen.vision_config
    assert t.hidden_size // t.num_attention_heads == 128 and v.hidden_size // v.num_heads == 80
    assert t.num_attention_heads % t.num_key_value_heads == 0
    assert sum(t.rope_parameters["mrope_section"]) == 64  # half the head dim
    assert v.out_hidden_size == t.hidden_size and all(0 <= i < v.depth for i in v.fullatt_block_indexes)
    assert (672 // v.patch_size // v.spatial_merge_size) ** 2 == 576  # bench_vllm's Qwen image side
