"""Every op registers a kernel per device it is built for, each from its own source file (csrc/cpu/<op>_cpu.cpp,
csrc/cuda/<op>_cuda.cu): a registration lost in a move shows here, not as a dispatch error in a user's model."""
import pytest
import torch

import restore_ext  # noqa: F401  (loads the op library)
from restore_ext import _build_info

OPS = ("topk_indices", "divprune_indices", "anchor_merge", "calibrated_attention")
# CPU only by design: VisPruner's rounds are sequential small steps; on other devices vispruner_indices runs
# them as torch ops (restore_ext.vispruner.matching_rounds). HoloV's crop statistic and whole selection fuse
# what one batched GPU matmul, reductions and a few sorts already do without a host sync
# (restore_ext.holov.holov_indices_torch).
CPU_ONLY_OPS = ("vispruner_matching", "holov_crop_variance", "holov_crop_variance_bounds", "holov_indices")


@pytest.mark.parametrize("op", OPS + CPU_ONLY_OPS)
def test_cpu_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"restore::{op}", "CPU")


@pytest.mark.skipif(not _build_info.WITH_CUDA, reason="CPU-only build: no CUDA kernels to register")
@pytest.mark.parametrize("op", OPS)
def test_cuda_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"restore::{op}", "CUDA")
