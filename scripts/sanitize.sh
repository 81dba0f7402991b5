#!/usr/bin/env bash
# The CPU op tests under AddressSanitizer + UndefinedBehaviorSanitizer (`make sanitize`, `make sanitize-quick`).
#
#   scripts/sanitize.sh          every CPU op test (the property-based ones included)
#   scripts/sanitize.sh quick    a short subset for CI: the property-based tests at the "ci" budget and the
#                                error tests
#   extra arguments go to pytest (e.g. -x, -k topk).
#
# The CPU kernels are built with -fsanitize=address,undefined (RESTORE_EXT_SANITIZE=1, CPU-only) in a copy of
# the tree under build/sanitize/, so the normal in-place build is untouched; ninja recompiles only what changed
# on the next run. Python itself is not instrumented, so libasan is preloaded (it must come first in the
# process). CPython and torch keep memory alive on purpose: leak detection is off. UBSan stops at the first
# report, with a stack trace, and so fails the test that triggered it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, but not resolved: a venv's python is a link
STAGE=build/sanitize
MODE=full
if [[ "${1:-}" == quick ]]; then MODE=quick; shift; fi

# Sources, package, tests and benchmarks/ (test_holov / test_vispruner import the authors' loops from it) as they
# are now. Only files whose content changed are rewritten (with a fresh mtime), and files gone from the tree are
# removed, so ninja recompiles exactly what changed and the object files in $STAGE/build survive between runs.
"$PY" - "$STAGE" csrc restore_ext tests benchmarks setup.py pyproject.toml README.md <<'SYNC'
import filecmp, os, shutil, sys
stage, tops = sys.argv[1], sys.argv[2:]
wanted = set()
for top in tops:
    walk = [(os.path.dirname(top), [], [os.path.basename(top)])] if os.path.isfile(top) else os.walk(top)
    for folder, dirs, files in walk:
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".so") or name == "_build_info.py":  # never test the normal build by mistake
                continue
            src = os.path.join(folder, name)
            dst = os.path.join(stage, src)
            wanted.add(os.path.normpath(dst))
            if not (os.path.exists(dst) and filecmp.cmp(src, dst, shallow=False)):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
for top in tops:
    for folder, dirs, files in os.walk(os.path.join(stage, top)):
        for name in files:
            path = os.path.normpath(os.path.join(folder, name))
            if path not in wanted and "__pycache__" not in path:
                os.remove(path)
SYNC
rm -f "$STAGE"/restore_ext/_C*.so "$STAGE/restore_ext/_build_info.py"

cd "$STAGE"
echo "sanitize: building the CPU kernels with -fsanitize=address,undefined in $STAGE" >&2
env -u RESTORE_EXT_REQUIRE_CUDA RESTORE_EXT_CPU_ONLY=1 RESTORE_EXT_SANITIZE=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" setup.py -q build_ext --inplace >/dev/null
LIB=$(ls restore_ext/_C*.so)
if ! ldd "$LIB" | grep libasan >/dev/null; then  # not grep -q: its early exit fails the pipe under pipefail
    echo "sanitize: $LIB is not linked against libasan; refusing to report a sanitizer run" >&2
    exit 1
fi

# Op tests only: not the model integration, the CUDA emulators, the build / packaging / docs checks.
if [[ $MODE == quick ]]; then
    TESTS=(tests/test_fuzz_*.py tests/test_errors.py)
else
    TESTS=()
    for t in tests/test_*.py; do
        case $t in
            *_cuda.py|*cuda_emulation*|*cmake_build*|*compile_and_build*|*test_docs*|*info_and_loading*) ;;
            # models and integrations (slow under ASan, and they reach the kernels through the op tests' paths)
            *transformers_*|*cls_attention*|*qwen_models*|*lmms_eval*|*vllm_*|*visualize*|*bench_end_to_end*|*test_demo*) ;;
            *large_n_cpu*) ;;  # N = 20000 timed in seconds: not what an -O1 sanitized build is for
            *) TESTS+=("$t") ;;
        esac
    done
fi

# libstdc++ too: Python is a C program, so without it ASan's __cxa_throw interceptor finds no real __cxa_throw
# at start-up and aborts at the first C++ exception (every TORCH_CHECK that refuses a bad argument).
export LD_PRELOAD="$(c++ -print-file-name=libasan.so):$(c++ -print-file-name=libstdc++.so)${LD_PRELOAD:+:$LD_PRELOAD}"
# abort_on_error: the first report stops the process with SIGABRT, so faulthandler also prints the Python stack
# (which test). --capture=sys: pytest captures Python's stdout / stderr only, so a report written to file
# descriptor 2 by the sanitizer runtime reaches the terminal instead of dying with the captured output.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export RESTORE_EXT_FUZZ_PROFILE="${RESTORE_EXT_FUZZ_PROFILE:-ci}"
echo "sanitize: running ${#TESTS[@]} test files ($MODE) with LD_PRELOAD=$LD_PRELOAD" >&2
"$PY" -c "import restore_ext._C as c; print('sanitize: testing', c.__file__)"
# Known bugs marked xfail are left out: under a sanitizer they stop the whole run (UB, e.g. the int64 wrap of
# issue 14 item 5) instead of failing one test; they run here as soon as their fix removes the mark.
exec "$PY" -m pytest -q -p no:cacheprovider --capture=sys -m "not cuda and not xfail" "${TESTS[@]}" "$@"
