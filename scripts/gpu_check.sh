#!/usr/bin/env bash
# On a GPU machine that has its own torch and no network:
#   scripts/gpu_check.sh OUT_DIR [build|test|bench|all]
# build: compile restore_ext for the visible GPU's arch; test: every CUDA test (pytest -m cuda; the CPU
# ones run in CI) and the demo on the GPU; bench: the GPU benchmarks (JSON + plots). `all` (the default)
# runs the three in order.
# Each stage fits one 10-minute call of a lent machine, and later stages reuse the in-place build.
# Logs, results and a summary land in OUT_DIR.
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR [build|test|bench|all]}
stage=${2:-all}
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
dev=cuda
tests=(-m cuda tests)  # the CPU tests (and the CPU emulation of the kernels) run in CI
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible to $PY's torch: this check needs one (ALLOW_NO_GPU=1 runs it on the CPU instead)"
  [ "${ALLOW_NO_GPU:-0}" = 1 ] || exit 2
  dev=cpu
  tests=(tests)
fi

if [ "$stage" = build ] || [ "$stage" = all ]; then
  echo "== build (log: $out/build.log)"
  # TORCH_CUDA_ARCH_LIST unset: torch compiles for the visible GPU's arch only.
  if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} RESTORE_EXT_REQUIRE_CUDA=1 $PY setup.py build_ext --inplace > "$out/build.log" 2>&1; then
    tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1
  fi
  $PY -m restore_ext.info | tee "$out/info.txt"
fi

if [ "$stage" = test ] || [ "$stage" = all ]; then
  echo "== tests: pytest -q ${tests[*]} (log: $out/tests.log)"
  $PY -m pytest -q -rs "${tests[@]}" --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1 || status=1
  tail -15 "$out/tests.log"
  echo "== demo on $dev (log: $out/demo.log)"
  $PY -m restore_ext.demo --device "$dev" > "$out/demo.log" 2>&1 || status=1
  tail -20 "$out/demo.log"
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
  echo "== benchmarks (log: $out/bench.log)"
  PYTHONUNBUFFERED=1 $PY benchmarks/run.py --device "$dev" --out "$out" > "$out/bench.log" 2>&1 || status=1
  tail -40 "$out/bench.log"
fi

echo "results in $out (exit $status)"
exit $status
