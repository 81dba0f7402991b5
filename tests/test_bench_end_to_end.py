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
