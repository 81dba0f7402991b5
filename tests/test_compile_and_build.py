"""torch.compile support (fake kernels) and what the build registered."""
import shutil

import pytest
import torch

import restore_ext
from restore_ext import _build_info


def test_compile_fullgraph_cpu():
    def step(scores, x, q, k, v, log_size):
        keep = torch.ops.restore.topk_indices(scores, 4)
        merged, size, assign, anchors = torch.ops.restore.anchor_merge(x, 3)
        out = torch.ops.restore.calibrated_attention(q, k, v, log_size, None, None, None)
        return keep, merged, size.float().log(), out * 2

    args = (torch.randn(2, 12), torch.randn(2, 12, 8), torch.randn(1, 5, 4, 16), torch.randn(1, 9, 2, 16),
            torch.randn(1, 9, 2, 16), torch.randn(1, 9))
    compiled = torch.compile(step, fullgraph=True)
    for got, want in zip(compiled(*args), step(*args)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph_through_the_python_wrappers(dynamic):
    """The typed wrappers (and their int-argument checks) trace into one graph too, with k static or symbolic."""

    def step(scores, x, k):
        keep = restore_ext.topk_indices(scores, k)
        merged = restore_ext.anchor_merge(x, k)
        return keep, merged.merged, merged.size, restore_ext.divprune_indices(x, k)

    args = (torch.randn(2, 12), torch.randn(2, 12, 8), 4)
    compiled = torch.compile(step, fullgraph=True, dynamic=dynamic)
    for got, want in zip(compiled(*args), step(*args)):
        torch.testing.assert_close(got, want)


def test_every_op_has_a_cpu_kernel():
    for op in ("topk_indices", "anchor_merge", "calibrated_attention"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"restore::{op}", "CPU"), op


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None, reason="no CUDA toolkit or CPU-only torch")
def test_cuda_kernels_were_built_where_a_toolkit_is_present():
    """Where nvcc and a CUDA torch exist the build must include the CUDA sources (not fall back silently)."""
    assert _build_info.WITH_CUDA
    assert torch._C._dispatch_has_kernel_for_dispatch_key("restore::topk_indices", "CUDA")
