"""Shared test helpers: devices, dtypes, and FlashAttention's tolerance rule."""
import os
import subprocess
import sys
import textwrap

import math

import pytest
import torch

import restore_ext  # noqa: F401  (registers torch.ops.restore.*)

# tests/vllm/ needs vLLM's own virtual environment (`make test-vllm` sets RESTORE_TEST_VLLM=1); the main run never
# collects it, so it never imports vllm.
collect_ignore = [] if os.environ.get("RESTORE_TEST_VLLM") == "1" else ["vllm"]

HAS_CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Every op test runs on CPU and, when a GPU is present, on CUDA; CUDA params are skipped with a reason
# otherwise, so a CPU-only run says how many CUDA checks it did not do.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible")]),
]


def fa_tolerance_check(out, ref64, eager_lowp, floor=1e-6, factor=2.0):
    """FlashAttention's rule: a kernel's error against the float64 reference is at most `factor` times the
    error of the same math done by eager PyTorch in the kernel's precision (plus a tiny floor for exact
    cases). Float32 kernels are held to the float32 eager error the same way."""
    ref64 = ref64.double()
    err = (out.double() - ref64).abs().max().item() if out.numel() else 0.0
    eager_err = (eager_lowp.double() - ref64).abs().max().item() if out.numel() else 0.0
    assert err <= factor * eager_err + floor, (
        f"kernel error {err:.3e} exceeds {factor} x eager error {eager_err:.3e} + {floor:.0e}"
    )


def run_isolated(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter, so a crash (segfault, abort) fails the test instead of pytest."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def eager_same_precision(q, k, v, log_size, q_pos, k_pos, table, causal, scale=None):
    """The same math as the reference, done by eager PyTorch in the inputs' dtype (the FlashAttention tests'
    yardstick for how much error that precision forces)."""
    b, lq, h, dh = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(dh) if scale is None else scale
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    kt, vt = kt.repeat_interleave(h // hkv, 1), vt.repeat_interleave(h // hkv, 1)
    logit = (qt @ kt.transpose(-1, -2)) * scale
    if log_size is not None:
        logit = logit + log_size[:, None, None, :].to(q.dtype)
    if table is not None:
        dist = (q_pos.long()[:, :, None] - k_pos.long()[:, None, :]).clamp(0, table.shape[0] - 1)
        logit = logit + table[dist][:, None].to(q.dtype)
    if causal:
        i = torch.arange(lq, device=q.device)[:, None]
        j = torch.arange(lk, device=q.device)[None, :]
        logit = logit.masked_fill(j > i + lk - lq, -math.inf)
    prob = torch.softmax(logit, dim=-1).nan_to_num(0.0)
    return (prob @ vt).transpose(1, 2)
