"""Builds restore_ext._C: the CPU kernels always, the CUDA kernels whenever a CUDA toolkit and a CUDA build
of torch are present, even with no GPU (as flash-attn and xformers do).

Environment:
  TORCH_CUDA_ARCH_LIST     CUDA archs to compile (default "8.0;9.0+PTX" when no GPU is visible: the wheel's
                           list, so `make wheel` after `make build` reuses the compiled objects)
  MAX_JOBS                 parallel compile jobs (read by torch's ninja build)
  RESTORE_EXT_CPU_ONLY=1   skip the CUDA kernels
  RESTORE_EXT_REQUIRE_CUDA=1  fail instead of building CPU-only when CUDA cannot be built (CI uses it)
  RESTORE_EXT_PREBUILT=1   package the in-place build (make build) without compiling; same torch only
  RESTORE_EXT_SANITIZE=1   CPU kernels under AddressSanitizer + UndefinedBehaviorSanitizer (needs
                           RESTORE_EXT_CPU_ONLY=1; `make sanitize` builds so in a copy of the tree, see
                           scripts/sanitize.sh)
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and any(
        os.path.exists(os.path.join(path, lib, "libcudart.so")) for lib in ("lib64", "lib", "targets/x86_64-linux/lib")
    )


def _find_cuda_home():
    """torch guesses CUDA_HOME from `which nvcc`; where nvcc on PATH is a wrapper script that guess lands on a
    folder without libcudart and the link fails. Look for the folder that really holds the toolkit."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script names the real nvcc
            with open(nvcc, "rb") as f:
                head = f.read(4096).decode("utf-8", "ignore")
            for word in head.replace('"', " ").split():
                if word.endswith("/bin/nvcc"):
                    candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if _is_toolkit_root(c)), None)


_cuda_home = None if os.environ.get("RESTORE_EXT_CPU_ONLY") == "1" else _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home  # must be set before torch.utils.cpp_extension is imported

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _cusparse_include_dirs():
    """ATen/cuda/CUDAContext.h includes cusparse.h, which ships in the nvidia.cu13 (or cu12) Python package
    that torch pulls in, not in every toolkit."""
    dirs = []
    for path in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cusparse/include", "nvidia/cu12/include"):
            d = os.path.join(path, sub)
            if os.path.isfile(os.path.join(d, "cusparse.h")):
                dirs.append(d)
    return dirs


def _want_cuda():
    if os.environ.get("RESTORE_EXT_CPU_ONLY") == "1":
        return False, "RESTORE_EXT_CPU_ONLY=1"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if not _cuda_home:
        return False, "no CUDA toolkit (nvcc with libcudart) was found"
    return True, f"CUDA toolkit at {_cuda_home}, torch CUDA {torch.version.cuda}"


def _check_prebuilt():
    """RESTORE_EXT_PREBUILT=1: package the extension already built in place (`make build`) instead of compiling
    it again, for an editable install into a second virtual environment with the same torch (make test-eval)."""
    info_path = os.path.join(ROOT, "restore_ext", "_build_info.py")
    if not glob.glob(os.path.join(ROOT, "restore_ext", "_C*.so")) or not os.path.isfile(info_path):
        sys.exit("restore_ext: RESTORE_EXT_PREBUILT=1 but restore_ext/ holds no in-place build (run `make build`)")
    info = {}
    with open(info_path) as f:
        exec(f.read(), info)
    if info["TORCH_VERSION"] != torch.__version__:
        sys.exit(f"restore_ext: RESTORE_EXT_PREBUILT=1 but the in-place build is for torch {info['TORCH_VERSION']} "
                 f"and this environment has torch {torch.__version__}; build it here instead")


prebuilt = os.environ.get("RESTORE_EXT_PREBUILT") == "1"
if prebuilt:
    _check_prebuilt()
with_cuda, why = _want_cuda()
if not prebuilt and not with_cuda and os.environ.get("RESTORE_EXT_REQUIRE_CUDA") == "1":
    sys.exit(f"restore_ext: RESTORE_EXT_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: {why}")
if not prebuilt:
    print(f"restore_ext: building {'CPU + CUDA' if with_cuda else 'CPU-only'} kernels ({why})", file=sys.stderr)

if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
cuda_archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "native") if with_cuda else ""

sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
cxx_flags = ["-O3", "-fopenmp"]
extra_link_args = ["-fopenmp"]
if os.environ.get("RESTORE_EXT_SANITIZE") == "1":
    if with_cuda:
        sys.exit("restore_ext: RESTORE_EXT_SANITIZE=1 sanitizes the CPU kernels only; set RESTORE_EXT_CPU_ONLY=1 too")
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    # -O1: readable reports, still fast enough for the tests. -fno-wrapv: Python's own build flags carry
    # -fwrapv, which defines signed overflow as wrapping and so hides it from UBSan.
    cxx_flags = ["-O1", "-fno-wrapv", "-fopenmp"] + sanitize
    extra_link_args += sanitize
if with_cuda:
    sources += sorted(glob.glob("csrc/cuda/**/*.cu", recursive=True))
    include_dirs += _cusparse_include_dirs()
    extension = CUDAExtension(
        "restore_ext._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"],
        },
        extra_link_args=extra_link_args,
    )
else:
    extension = CppExtension(
        "restore_ext._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link_args,
    )

# What this build was made with, for restore_ext.info and for the torch-mismatch check at import.
if not prebuilt:
    with open(os.path.join(ROOT, "restore_ext", "_build_info.py"), "w") as f:
        f.write(
            "# Written by setup.py at build time.\n"
            f"TORCH_VERSION = {torch.__version__!r}\n"
            f"WITH_CUDA = {with_cuda!r}\n"
            f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n"
            f"CUDA_ARCHS = {cuda_archs!r}\n"
        )

setup(
    name="restore_ext",
    # A C++ extension loads only into the torch it was compiled against: pin it (the import check says the same).
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    packages=find_packages(include=["restore_ext", "restore_ext.*"]),
    ext_modules=[] if prebuilt else [extension],
    cmdclass={"build_ext": BuildExtension},
)
