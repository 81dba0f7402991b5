"""CUDA kernels run on the CPU by tests/cuda_emulation (g++, one std::thread per CUDA thread, warp shuffles,
shared memory and PTX fragment layouts emulated): catches indexing bugs where no GPU is.

- emulate_fwd_kernel: the tensor-core calibrated_attention kernel (fwd_kernel.h) against float64, with
  cp.async copies landing at issue or only at the wait that covers them (a missing wait shows), and every
  cp.async / ldmatrix checked for shared-memory races between barriers (a missing __syncthreads shows).
- emulate_attention_kernels: the SIMT attention kernel (simt_kernel.h) against float64, the
  flash-decoding combine (combine_kernel.h) against the same merge in float64, and the device-side log_size
  and table checks (log_size_check_kernel.h, table_check_kernel.h) against host scans. Both attention kernels
  run 1-D and M-RoPE (t, h, w) positions.
- emulate_reduction_kernels: the radix-select top-k (block_topk.cuh), the fused tiled similarity row
  reduction (similarity_tiles.cuh), DivPrune's cooperative greedy kernel (divprune_greedy.cuh, every
  block at once with grid.sync()) and the whole anchor_merge pipeline (anchor_merge_kernels.cuh, launched as
  anchor_merge_cuda.cu does) against host loops and docs/ops.md §2 in float64.

Where g++ can link ThreadSanitizer, the kernels whose threads share plain __shared__ arrays run under it
(the tensor-core one at one head dim): the emulated __syncthreads is a real barrier, so a missing one is a
data race TSan reports (exit status 66) whatever order the threads happened to run in. TSan remembers only
a few accesses per memory word, so a race on a word that hundreds of threads read (a block-wide broadcast
value) can slip through; the cp.async / ldmatrix epoch check above has no such limit. DivPrune's cooperative
grid (over a thousand threads) is too slow under TSan and runs without it.
"""
import functools
import os
import shutil
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CXX = shutil.which("g++")
TSAN = ["-fsanitize=thread", "-g"]


def build(tmp_path_factory, name, extra=(), shadow_dir=None):
    """Builds tests/cuda_emulation/<name>.cpp; headers in shadow_dir, if given, replace the project's."""
    if CXX is None:
        pytest.skip("no g++ to build the kernel emulation")
    exe = str(tmp_path_factory.mktemp("emulation") / name)
    includes = [os.path.join(HERE, "cuda_emulation"), os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    if shadow_dir is not None:
        includes.insert(0, str(shadow_dir))
    cmd = [CXX, "-std=c++20", "-O1", "-pthread", *extra, *(f"-I{d}" for d in includes + include_paths()),
           os.path.join(HERE, "cuda_emulation", f"{name}.cpp"), "-o", exe]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return exe


@functools.lru_cache(maxsize=None)
def tsan_flags():
    """TSAN when g++ can build and run a ThreadSanitizer program here, else no flags (plain build)."""
    if CXX is None:
        return ()
    probe = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"restore_tsan_probe_{os.getpid()}")
    ok = subprocess.run([CXX, "-x", "c++", "-", *TSAN, "-pthread", "-o", probe], input="int main() { return 0; }",
                        capture_output=True, text=True).returncode == 0
    ok = ok and subprocess.run([probe], capture_output=True).returncode == 0
    if os.path.exists(probe):
        os.remove(probe)
    return tuple(TSAN) if ok else ()


def run_emulator(exe, *args, timeout=600):
    run = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0 and "ThreadSanitizer" not in run.stderr, f"rc={run.returncode}\n{run.stdout}{run.stderr[-6000:]}"
    return run


@pytest.fixture(scope="module")
def fwd_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_fwd_kernel")


@pytest.fixture(scope="module")
def fwd_emulator_tsan(tmp_path_factory):
    if not tsan_flags():
        pytest.skip("g++ cannot build ThreadSanitizer programs here")
    return build(tmp_path_factory, "emulate_fwd_kernel", tsan_flags())


@pytest.fixture(scope="module")
def attention_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_attention_kernels", tsan_flags())


@pytest.fixture(scope="module")
def reduction_emulator(tmp_path_factory):
    return build(tmp_path_factory, "emulate_reduction_kernels", tsan_flags())


@pytest.fixture(scope="module")
def reduction_emulator_plain(tmp_path_factory):
    return build(tmp_path_factory, "emulate_reduction_kernels")


@pytest.mark.parametrize("copy_timing", ["eager", "late"])  # cp.async lands at issue / at its covering wait
@pytest.mark.parametrize("head_dim", [64, 96, 128, 256])
def test_emulated_attention_kernel_matches_float64(fwd_emulator, head_dim, copy_timing):
    run_emulator(fwd_emulator, str(head_dim), copy_timing, timeout=900)


def test_emulated_attention_kernel_under_tsan(fwd_emulator_tsan):
    """The races the cp.async / ldmatrix check cannot see: plain shared-memory stores (the tiles' k_pos and
    log_size). One head dim: the others differ only in template constants."""
    run_emulator(fwd_emulator_tsan, "64", "late", timeout=900)


@pytest.mark.parametrize("kernel", ["simt", "combine"])
def test_emulated_simt_and_combine_kernels_match_float64(attention_emulator, kernel):
    run_emulator(attention_emulator, kernel)


def test_emulated_log_size_check_asserts_exactly_on_inf_and_nan(attention_emulator):
    run_emulator(attention_emulator, "log_size_check")


def test_emulated_table_check_asserts_on_the_tables_the_op_refuses(attention_emulator):
    run_emulator(attention_emulator, "table_check")


@pytest.mark.parametrize("kernel", ["topk", "similarity", "anchor_merge"])
def test_emulated_reduction_kernel_matches_host_loops(reduction_emulator, kernel):
    assert "all cases match" in run_emulator(reduction_emulator, kernel).stdout


def test_emulated_divprune_kernels_match_host_loops(reduction_emulator_plain):
    assert "all cases match" in run_emulator(reduction_emulator_plain, "divprune").stdout


def test_race_check_sees_a_missing_barrier(tmp_path_factory):
    """The emulation's race detection is real: the tiled similarity kernel with its second __syncthreads
    removed (the next chunk's loads overwrite the tile other threads still read) must fail."""
    if not tsan_flags():
        pytest.skip("g++ cannot build ThreadSanitizer programs here")
    src = os.path.join(ROOT, "csrc", "cuda", "similarity_tiles.cuh")
    text = open(src).read()
    barrier = "      }\n      __syncthreads();\n    }"
    assert text.count(barrier) == 1, "similarity_tiles.cuh changed: update this test's barrier pattern"
    mutant_dir = tmp_path_factory.mktemp("mutant")
    os.makedirs(mutant_dir / "cuda")
    (mutant_dir / "cuda" / "similarity_tiles.cuh").write_text(text.replace(barrier, "      }\n    }"))
    exe = build(tmp_path_factory, "emulate_reduction_kernels", tsan_flags(), shadow_dir=mutant_dir)
    run = subprocess.run([exe, "similarity"], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "ThreadSanitizer" in run.stderr
