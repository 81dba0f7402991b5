"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): images and videos, M-RoPE with ``mrope_section`` in
contiguous chunks (t, then h, then w). Positions, budgets and decode: see ``qwen_vl``."""
from __future__ import annotations

from .qwen_vl import QwenVLAdapter


class Qwen2_5_VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    interleaved = False
    cleared_inputs = QwenVLAdapter.cleared_inputs + ("second_per_grid_ts",)

    def model_class_names(self) -> tuple:
        return ("Qwen2_5_VLForConditionalGeneration",)
