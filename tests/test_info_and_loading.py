"""`python -m restore_ext.info` and the import-time checks a user meets first."""
import subprocess
import sys

import pytest

import restore_ext
from restore_ext import _build_info, _loader, info


def test_info_reports_versions_and_every_op():
    out = subprocess.run([sys.executable, "-m", "restore_ext.info"], capture_output=True, text=True, check=True).stdout
    assert f"restore_ext {restore_ext.__version__}" in out
    assert f"built against {_build_info.TORCH_VERSION}" in out
    for op in ("topk_indices", "anchor_merge", "calibrated_attention"):
        assert op in out
    assert info.kernel_table()["topk_indices"]["CPU"]


def test_torch_mismatch_fails_with_a_rebuild_message(monkeypatch):
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"built against torch 1\.0\.0 .* Rebuild"):
        _loader.load_library()
