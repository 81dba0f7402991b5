#!/usr/bin/env bash
# One command on a GPU machine that has its own torch and no network:
#   scripts/gpu_check.sh OUT_DIR
# builds restore_ext for the visible GPU's arch, runs every test (CUDA ones included), runs the GPU
# benchmarks, and leaves logs, JSON results and a summary in OUT_DIR.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name())"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible to $PY's torch: this check needs one (ALLOW_NO_GPU=1 runs the CPU part anyway)"
  [ "${ALLOW_NO_GPU:-0}" = 1 ] || exit 2
fi

echo "== build (log: $out/build.log)"
# TORCH_CUDA_ARCH_LIST unset: torch compiles for the visible GPU's arch only.
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} RESTORE_EXT_REQUIRE_CUDA=1 $PY setup.py build_ext --inplace > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1
fi
$PY -m restore_ext.info | tee "$out/info.txt"

echo "== tests (log: $out/tests.log)"
$PY -m pytest -q -rs tests --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1 || status=1
tail -5 "$out/tests.log"

echo "== benchmarks (log: $out/bench.log)"
$PY benchmarks/run.py --device cuda --out "$out" > "$out/bench.log" 2>&1 || status=1
tail -40 "$out/bench.log"

echo "results in $out (exit $status)"
exit $status
