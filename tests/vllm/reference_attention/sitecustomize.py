"""Test-only: with RESTORE_TEST_REFERENCE_ATTENTION=1 on PYTHONPATH, every process (vLLM's engine core and workers
too) runs restore_ext.calibrated_attention as its float64 reference (docs/ops.md §5 / §5b). It stands in for the
compiled op where the build lacks a form the tests need (multi-axis positions before the kernels land); the
integration's logic is what those tests check."""
import os

if os.environ.get("RESTORE_TEST_REFERENCE_ATTENTION") == "1":
    import restore_ext
    from restore_ext import reference

    def _reference_calibrated_attention(q, k, v, log_size=None, q_pos=None, k_pos=None, table=None, causal=True,
                                        scale=None):
        return reference.calibrated_attention(q, k, v, log_size, q_pos, k_pos, table, causal, scale).to(q.dtype)

    restore_ext.calibrated_attention = _reference_calibrated_attention
