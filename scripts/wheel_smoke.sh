#!/usr/bin/env bash
# Installs the wheel from wheelhouse/ into a fresh virtual environment and runs every op there, from a
# folder outside the source tree (so the installed package, not the checkout, is what gets imported).
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=$(ls -t wheelhouse/restore_ext-*.whl | head -1)
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==${TORCH_VERSION:-2.14.1}" "$wheel"
cd "$(dirname "$venv")"
"$venv/bin/python" - <<'PY'
import torch, restore_ext
from restore_ext import info
assert "/venv/" in restore_ext.__file__, restore_ext.__file__
x = torch.randn(2, 40, 16)
keep = restore_ext.topk_indices(x.norm(dim=-1), 5)
red = restore_ext.restore_reduce(x, keep, 12)
assert (red.size.sum(1) == 40).all()
q = torch.randn(2, 12, 4, 16)
out = restore_ext.calibrated_attention(q, q[:, :, :2], q[:, :, :2], red.size.float().log())
assert out.shape == q.shape and out.isfinite().all()
print(info.report())
print("wheel smoke test passed")
PY
rm -rf "$(dirname "$venv")"
