"""The tensor-core calibrated_attention kernel run on the CPU by tests/cuda_emulation (g++, one thread per
CUDA thread, PTX fragment layouts emulated): catches indexing bugs of fwd_kernel.h where no GPU is."""
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CXX = shutil.which("g++")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip("no g++ to build the kernel emulation")
    exe = str(tmp_path_factory.mktemp("emulation") / "emulate_fwd_kernel")
    includes = [os.path.join(HERE, "cuda_emulation"), os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", *(f"-I{d}" for d in includes + include_paths()),
           os.path.join(HERE, "cuda_emulation", "emulate_fwd_kernel.cpp"), "-o", exe]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    return exe


@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_emulated_kernel_matches_float64(emulator, head_dim):
    run = subprocess.run([emulator, str(head_dim)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
