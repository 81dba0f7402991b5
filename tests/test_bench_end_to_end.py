"""benchmarks/bench_end_to_end.py runs end to end on a very small scale: every variant's prompt reaches the LLM
with the right length, the stages are measured, the JSON and the plot are written."""
import json
import os
import sys

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_end_to_end as e2e  # noqa: E402


def test_end_to_end_benchmark_small_scale(tmp_path, capsys):
    e2e.main(["--scale", "0.0625", "--repeats", "1", "--decode-tokens", "2", "--out", str(tmp_path),
              "--only", "full,prune 64,ToMe 128,RESTORE 192"])
    (path,) = tmp_path.glob("e2e-llava15-cpu-s0.0625-*.json")
    data = json.loads(path.read_text())
    assert data["scale"] == 0.0625 and data["prompt"] == [35, 576, 15]
    text = 35 + 15
    assert {r["variant"]: r["llm_tokens"] for r in data["rows"]} == {
        "full": text + 576, "prune 64": text + 64, "ToMe 128": text + 128, "RESTORE 192": text + 192}
    for r in data["rows"]:
        assert 0 < r["vision"] and 0 <= r["reduction"] and 0 < r["llm"] and r["decode_tok_s"] > 0
        assert r["vision"] + r["reduction"] + r["llm"] <= r["ttft"]
    assert path.with_suffix(".png").stat().st_size > 1000
    assert "scale 0.0625" in capsys.readouterr().out


def test_end_to_end_benchmark_qwen2_5_vl_small_scale(tmp_path, capsys):
    e2e.main(["--model", "qwen2_5_vl", "--scale", "0.0625", "--repeats", "1", "--decode-tokens", "2", "--out",
              str(tmp_path), "--only", "full,prune 64,ToMe 128,RESTORE 192"])
    (path,) = tmp_path.glob("e2e-qwen2_5_vl-cpu-s0.0625-*.json")
    data = json.loads(path.read_text())
    assert data["model"] == "Qwen2.5-VL-7B shapes" and data["prompt"] == [36, 576, 16]  # vision start / end tokens
    text = 36 + 16
    assert {r["variant"]: r["llm_tokens"] for r in data["rows"]} == {
        "full": text + 576, "prune 64": text + 64, "ToMe 128": text + 128, "RESTORE 192": text + 192}
    for r in data["rows"]:
        assert 0 < r["vision"] and 0 <= r["reduction"] and 0 < r["llm"] and r["decode_tok_s"] > 0
        assert r["vision"] + r["reduction"] + r["llm"] <= r["ttft"]
    assert path.with_suffix(".png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "Qwen2.5-VL-7B shapes, scale 0.0625" in out


def test_qwen2_5_vl_shapes_scale_as_documented():
    from model_configs import qwen2_5_vl_config

    full, quarter = qwen2_5_vl_config(1.0), qwen2_5_vl_config(0.25)
    v, t = full.vision_config, full.text_config
    assert (v.depth, v.hidden_size, v.num_heads, v.fullatt_block_indexes) == (32, 1280, 16, [7, 15, 23, 31])
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (3584, 28, 28, 4)
    v, t = quarter.vision_config, quarter.text_config
    assert (v.depth, v.hidden_size, v.num_heads, v.fullatt_block_indexes) == (8, 320, 4, [1, 3, 5, 7])
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads) == (896, 7, 7, 1)
    assert t.rope_parameters["mrope_section"] == [16, 24, 24] and t.vocab_size == 152064
