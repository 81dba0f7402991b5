"""Fixtures of the vLLM tier (run by `make test-vllm` in .venv-vllm): the tiny checkpoint, the transformers
reference, and engines started in subprocesses on loopback only, offline."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from tiny_models import make_tiny_llava  # noqa: E402

NUM_TOKENS = 8  # of the tiny tower's 16 visual tokens per image: 4 kept by DivPrune, 4 merged
MAX_TOKENS = 8
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",  # tensor parallel would otherwise bind the machine's own address
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def restore_overrides(**kw):
    from restore_ext.integrations.vllm import hf_overrides

    return hf_overrides(num_tokens=kw.pop("num_tokens", NUM_TOKENS), **kw)


class EngineFailed(Exception):
    pass


def run_engine(spec: dict, env: dict | None = None, timeout: float = 900.0) -> dict:
    """Runs run_vllm.py with `spec` in a fresh interpreter; returns its RESULT, or raises EngineFailed with the
    process output (for tests that expect a refusal)."""
    full_env = {**os.environ, **ENV, **(env or {})}
    proc = subprocess.run([sys.executable, os.path.join(HERE, "run_vllm.py"), json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout, env=full_env, cwd=HERE)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise EngineFailed(f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    return make_tiny_llava(str(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def hf_restore(tiny_llava):
    """apply_restore in transformers, greedy, on the one- and two-image prompts."""
    from hf_reference import restore_greedy

    return restore_greedy(tiny_llava, NUM_TOKENS, MAX_TOKENS)


@pytest.fixture(scope="session")
def plain_vllm(tiny_llava):
    """vLLM with the plugin switched off (VLLM_PLUGINS names none): the baseline for text-only requests."""
    return run_engine({"model": tiny_llava}, env={"VLLM_PLUGINS": ""})


@pytest.fixture(scope="session")
def restore_vllm(tiny_llava):
    """vLLM + RESTORE, the three prompts (1 image, 2 images, text only) in one batch."""
    return run_engine({"model": tiny_llava, "engine": {"hf_overrides": restore_overrides()}})


def assert_same_generation(got: dict, want: dict, atol: float = 1e-5):
    assert got["tokens"] == want["tokens"]
    diff = max(abs(a - b) for a, b in zip(got["logprobs"], want["logprobs"]))
    assert diff <= atol, f"max |logprob difference| {diff:.2e} > {atol:.0e}"
