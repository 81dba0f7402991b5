"""The CMake build for C++ users: configures and builds the CPU op library against libtorch, then a fresh
process loads it with torch.ops.load_library and checks the ops against the reference."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import run_isolated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cuda_root():
    for root in [os.environ.get("CUDA_HOME", "")] + sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_library_builds_and_runs(tmp_path):
    args = ["cmake", "-S", ROOT, "-B", str(tmp_path), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if torch.version.cuda is not None:  # a CUDA torch makes find_package(Torch) look for the toolkit
        root = _cuda_root()
        if root is None:
            pytest.skip("CUDA build of torch but no CUDA toolkit for its CMake config")
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={root}", f"-DCMAKE_CUDA_COMPILER={root}/bin/nvcc"]
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0"))
    for cmd in (args, ["cmake", "--build", str(tmp_path), f"-j{os.cpu_count() or 2}"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lib = tmp_path / "librestore_ops.so"
    assert lib.exists()
    result = run_isolated(f"""
        import importlib, sys, types, torch
        torch.ops.load_library({str(lib)!r})
        # The float64 reference and the pure-PyTorch modules it imports, without the package's __init__ (which
        # would load the Python extension): a package object that only knows where the modules are.
        pkg = types.ModuleType("restore_ext_pure"); pkg.__path__ = [{os.path.join(ROOT, "restore_ext")!r}]
        sys.modules["restore_ext_pure"] = pkg
        ref = importlib.import_module("restore_ext_pure.reference")
        assert "restore_ext._C" not in sys.modules and "restore_ext" not in sys.modules
        s = torch.randn(3, 50)
        assert torch.equal(torch.ops.restore.topk_indices(s, 7), ref.topk_indices(s, 7))
        q, k = torch.randn(1, 9, 4, 16), torch.randn(1, 12, 2, 16)
        out = torch.ops.restore.calibrated_attention(q, k, k, None, None, None, None, True, None)
        torch.testing.assert_close(out.double(), ref.calibrated_attention(q, k, k), rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr
