"""divprune_indices on CUDA (docs/ops.md §1b) against the float64 greedy and the CPU kernel. Skipped (with a
reason) where no GPU is visible."""
import pytest
import torch

import restore_ext

from conftest import CUDA_ONLY, assert_divprune_exact_or_close

pytestmark = CUDA_ONLY


@pytest.mark.parametrize("n,k", [(576, 64), (2880, 192), (20000, 32)])
def test_divprune_cuda_matches_cpu_and_reference(n, k):
    x = torch.randn(2, n, 32)
    got = restore_ext.divprune_indices(x.cuda(), k).cpu()
    if n <= 2880:
        assert_divprune_exact_or_close(got, x, k)
    else:
        # Too big for the float64 replay (N x N doubles). CPU and GPU round differently, so among 20000 random
        # tokens a near-tie may flip one pick and the rest of the greedy with it; most picks must agree.
        cpu = restore_ext.divprune_indices(x, k)
        for row in range(2):
            common = len(set(got[row].tolist()) & set(cpu[row].tolist()))
            assert common >= int(0.75 * k), (common, k)


def test_divprune_cuda_many_rows():
    """More rows than fit in one cooperative grid: the batch is split over launches."""
    x = torch.randn(600, 64, 8)
    assert_divprune_exact_or_close(restore_ext.divprune_indices(x.cuda(), 10).cpu(), x, 10)


def test_divprune_cuda_opcheck():
    x = torch.randn(2, 50, 16, device="cuda")
    torch.library.opcheck(torch.ops.restore.divprune_indices.default, (x, 9))


def test_divprune_cuda_errors_name_arguments():
    x = torch.randn(2, 10, 4, device="cuda")
    with pytest.raises(RuntimeError, match="divprune_indices: k must satisfy"):
        restore_ext.divprune_indices(x, 0)
