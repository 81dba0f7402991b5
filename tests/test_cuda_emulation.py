"""CUDA kernels run on the CPU by tests/cuda_emulation (g++, one std::thread per CUDA thread, warp shuffles,
shared memory and PTX fragment layouts emulated): catches indexing bugs where no GPU is.

- emulate_fwd_kernel: the tensor-core calibrated_attention kernel (fwd_kernel.h) against float64, with
  cp.async copies landing at issue or only at the wait that covers them (a missing wait shows), and every
  cp.async / ldmatrix checked for shared-memory races between barriers (a missing __syncthreads shows).
- emulate_attention_kernels: the SIMT attention kernel (simt_kernel.h) against float64 and the
  flash-decoding combine (combine_kernel.h) against the same merge in float64.
- emulate_reduction_kernels: the radix-select top-k (block_topk.cuh), the fused tiled similarity row
  reduction (similarity_tiles.cuh), DivPrune's cooperative greedy kernel (divprune_greedy.cuh, every
  block at once with grid.sync()) and the whole anchor_merge pipeline (anchor_merge_kernels.cuh, launched as
  anchor_merge_cuda.cu does) against host loops and SPEC §2 in float64.
"""
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CXX = shutil.which("g++")


def build(tmp_path_factory, name):
    if CXX is None:
        pytest.skip("no g++ to build the kernel emulation")
    exe = str(tmp_path_factory.mktemp("emulation") / name)
    includes = [os.path.join(HERE, "cuda_emulation"), os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", *(f"-I{d}" for d in includes + include_paths()),
           os.path.join(HERE, "cuda_emulation", f"{name}.cpp"), "-o", exe]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


@pytest.fixture(scope="module")
def fwd_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_fwd_kernel")


@pytest.fixture(scope="module")
def attention_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_attention_kernels")


@pytest.fixture(scope="module")
def reduction_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_reduction_kernels")


@pytest.mark.parametrize("copy_timing", ["eager", "late"])  # cp.async lands at issue / at its covering wait
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_emulated_attention_kernel_matches_float64(fwd_emulator, head_dim, copy_timing):
    run = subprocess.run([fwd_emulator, str(head_dim), copy_timing], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("kernel", ["simt", "combine"])
def test_emulated_simt_and_combine_kernels_match_float64(attention_emulator, kernel):
    run = subprocess.run([attention_emulator, kernel], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("kernel", ["topk", "similarity", "divprune", "anchor_merge"])
def test_emulated_reduction_kernel_matches_host_loops(reduction_emulator, kernel):
    run = subprocess.run([reduction_emulator, kernel], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "all cases match" in run.stdout, f"rc={run.returncode}\n{run.stdout}{run.stderr}"
