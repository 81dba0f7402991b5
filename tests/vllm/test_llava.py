"""RESTORE in vLLM on a tiny LLaVA: parity with apply_restore in transformers and with plain vLLM, under vLLM's
scheduling features (chunked prefill, prefix caching, tensor parallel, preemption), and clear refusals."""
import pytest

from conftest import (NUM_TOKENS, EngineFailed, assert_same_generation, restore_overrides,
                      run_engine)
from tiny_models import FULL_TOKENS, PROMPTS


@pytest.mark.parametrize("prompt", [0, 1], ids=["1-image", "2-images"])
def test_greedy_tokens_and_logprobs_equal_apply_restore(restore_vllm, plain_vllm, hf_restore, prompt):
    got = restore_vllm["calls"][0][prompt]
    assert_same_generation(got, hf_restore[prompt])
    images = PROMPTS[prompt][1]  # the prompt really is shorter by N - K per image
    assert got["prompt_len"] == plain_vllm["calls"][0][prompt]["prompt_len"] - images * (FULL_TOKENS - NUM_TOKENS)


def test_text_request_batched_with_image_requests_equals_plain_vllm(restore_vllm, plain_vllm):
    assert_same_generation(restore_vllm["calls"][0][2], plain_vllm["calls"][0][2])


def test_plugin_without_restore_settings_runs_vllm_unchanged(tiny_llava, plain_vllm):
    # the plugin takes the place of vLLM's LLaVA class; without the "restore" entry it must be vLLM's own
    res = run_engine({"model": tiny_llava})
    assert res["calls"][0] == plain_vllm["calls"][0]


def test_chunked_prefill_splits_images_and_matches(tiny_llava, hf_restore):
    res = run_engine({"model": tiny_llava, "engine": {"hf_overrides": restore_overrides(),
                                                      "max_num_batched_tokens": 16, "enable_chunked_prefill": True}})
    for prompt in (0, 1):  # the 2-image prompt (30 tokens) is prefilled in two chunks, its images straddling them
        assert_same_generation(res["calls"][0][prompt], hf_restore[prompt])


def test_prefix_caching_second_call_hits_the_cache_and_matches(tiny_llava, hf_restore):
    res = run_engine({"model": tiny_llava, "calls": 2,
                      "engine": {"hf_overrides": restore_overrides(), "enable_prefix_caching": True,
                                 "block_size": 16}})
    assert res["prefix_cache_hits"] > 0
    for call in res["calls"]:
        for prompt in (0, 1):
            assert_same_generation(call[prompt], hf_restore[prompt])


def test_tensor_parallel_2_matches(tiny_llava, hf_restore):
    res = run_engine({"model": tiny_llava, "engine": {"hf_overrides": restore_overrides(), "tensor_parallel_size": 2,
                                                      "distributed_executor_backend": "mp"}},
                     env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    for prompt in (0, 1):
        assert_same_generation(res["calls"][0][prompt], hf_restore[prompt])


def test_preemption_by_a_small_kv_cache_gives_the_same_tokens(tiny_llava):
    from hf_reference import restore_greedy

    # 6 blocks of 16 slots for 6 requests that each grow past 2 blocks: some are preempted and recomputed
    long = 24
    res = run_engine({"model": tiny_llava, "prompts": [0, 1, 2, 0, 1, 2], "max_tokens": long,
                      "engine": {"hf_overrides": restore_overrides(), "block_size": 16, "num_gpu_blocks_override": 6,
                                 "max_model_len": 64, "enable_prefix_caching": False}})
    assert res["preemptions"] > 0
    want = restore_greedy(tiny_llava, NUM_TOKENS, long)
    for i, prompt in enumerate([0, 1, 2, 0, 1, 2]):
        if prompt < 2:
            assert_same_generation(res["calls"][0][i], want[prompt])


def test_pipeline_parallel_2_matches(tiny_llava, hf_restore):
    # stage 2 gets each token's original position and log sizes from stage 1 with the hidden states. vLLM-cpu
    # 0.32 allocates a later stage's receive buffers only in its compile warm-up, so pipeline parallelism needs
    # enforce_eager=False there: this test is also the one that runs RESTORE under vLLM's torch.compile.
    res = run_engine({"model": tiny_llava, "engine": {"hf_overrides": restore_overrides(), "pipeline_parallel_size": 2,
                                                      "distributed_executor_backend": "mp", "enforce_eager": False}},
                     env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    for prompt in (0, 1):
        assert_same_generation(res["calls"][0][prompt], hf_restore[prompt])


@pytest.mark.parametrize("engine, words", [
    ({"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}},
     "speculative decoding"),
    ({"hf_overrides": {"restore": {"num_tokens": NUM_TOKENS}}}, "a config without mrope_section"),
], ids=["speculative-decoding", "hand-written-overrides"])
def test_unsupported_configuration_is_refused_clearly(tiny_llava, engine, words):
    with pytest.raises(EngineFailed) as err:
        run_engine({"model": tiny_llava, "engine": {"hf_overrides": restore_overrides(), **engine}})
    assert f"RESTORE cannot run with {words}" in str(err.value)


def test_cli_hf_overrides_json_gives_the_same_settings():
    # `vllm serve MODEL --hf-overrides '<json>'` parses to the dict LLM(hf_overrides=...) takes
    import json

    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    want = restore_overrides(num_tokens=64, base="divprune", keep_ratio=0.5)
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(["--model", "m", "--hf-overrides", json.dumps(want)])
    assert EngineArgs.from_cli_args(args).hf_overrides == want

