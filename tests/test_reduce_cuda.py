"""restore_ext.reduce on CUDA tensors (docs/ops.md §3b): the same result as on the CPU, and no host sync.
Skipped (with a reason) where no GPU is visible."""
import pytest
import torch

import restore_ext

from conftest import CUDA_ONLY

pytestmark = CUDA_ONLY


@pytest.mark.parametrize("base", ["divprune", "uniform", "cls"])
def test_reduce_on_cuda_without_host_sync(base):
    x = torch.randn(4, 576, 64, device="cuda")
    scores = torch.rand(4, 576, device="cuda")
    restore_ext.reduce(x, 64, base=base, scores=scores)  # warm up (allocator, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = restore_ext.reduce(x, 64, base=base, scores=scores)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = restore_ext.reduce(x.cpu(), 64, base=base, scores=scores.cpu())
    assert torch.equal(out.position.cpu(), cpu.position) and torch.equal(out.source.cpu(), cpu.source)
    torch.testing.assert_close(out.tokens.cpu(), cpu.tokens, rtol=1e-5, atol=1e-5)
