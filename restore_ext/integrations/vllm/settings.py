"""RESTORE's settings as they travel through vLLM: one JSON object under the ``restore`` key of the HF config.

vLLM copies ``hf_overrides`` into the model's Hugging Face config in every process (the front end that runs the
multimodal processor, and each worker), so the settings need no channel of their own. This module imports
neither vLLM nor torch: ``hf_overrides`` can be built anywhere.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

CONFIG_KEY = "restore"
BASES = ("divprune", "uniform")
RULES = ("reference", "dpc")
# vLLM gives a model per-request positions (and the decode offset RESTORE's shortened prompt needs) only on its
# M-RoPE path, which it turns on when the HF config declares an `mrope_section`: its length sets the number of
# position rows (3), its values are unused for a 1-D RoPE language model (the text config is untouched), and
# models with M-RoPE of their own read theirs from the text config.
MROPE_SWITCH = {"mrope_section": [1, 1, 1]}


@dataclass(frozen=True)
class RestoreSettings:
    """num_tokens: visual tokens per image after reduction (an image with fewer keeps all of them).
    base: the method that keeps ``round(num_tokens * keep_ratio)`` tokens ("divprune" or "uniform"); the rest are
    merged into anchors. rule: the anchor rule of the merge ("reference": the authors' code, or "dpc").
    calibrate: add log(size) and the RoPE distance bias in attention (False: the shortened prompt at its original
    positions with plain attention, as ``apply_restore(calibrate=False)``)."""

    num_tokens: int = 64
    base: str = "divprune"
    keep_ratio: float = 0.5
    rule: str = "reference"
    calibrate: bool = True

    def __post_init__(self):
        def fail(what: str):
            raise ValueError(f"restore_ext.integrations.vllm: {what}")

        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int) or self.num_tokens < 2:
            fail(f"num_tokens must be an int >= 2 (kept and merged tokens), got {self.num_tokens!r}")
        if self.base not in BASES:
            fail(f"base must be one of {BASES}, got {self.base!r} (a callable base cannot travel as JSON)")
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < float(self.keep_ratio) < 1.0:
            fail(f"keep_ratio must lie strictly between 0 and 1, got {self.keep_ratio!r}")
        if self.rule not in RULES:
            fail(f"rule must be one of {RULES}, got {self.rule!r}")
        if not isinstance(self.calibrate, bool):
            fail(f"calibrate must be true or false, got {self.calibrate!r}")
        self.kept_and_merged(self.num_tokens)  # the budget itself must hold both kinds

    def tokens_for(self, full: int) -> int:
        """Tokens an image of ``full`` visual tokens keeps: ``min(num_tokens, full)``."""
        return min(self.num_tokens, full)

    def kept_and_merged(self, num_out: int) -> tuple[int, int]:
        """(R, num_out - R) with R = floor(num_out * keep_ratio + 0.5), as restore_ext.reduce counts them."""
        kept = math.floor(num_out * float(self.keep_ratio) + 0.5)
        if not 1 <= kept < num_out:
            raise ValueError(
                f"restore_ext.integrations.vllm: keep_ratio={self.keep_ratio} keeps {kept} of {num_out} tokens; "
                "RESTORE needs at least one kept and one merged token (1 <= round(num_tokens * keep_ratio) < "
                "num_tokens)"
            )
        return kept, num_out - kept

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_value(cls, value: Any) -> "RestoreSettings":
        if not isinstance(value, dict):
            raise ValueError(
                f"restore_ext.integrations.vllm: the HF config's {CONFIG_KEY!r} entry must be a JSON object, "
                f"got {type(value).__name__}"
            )
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"restore_ext.integrations.vllm: unknown settings {unknown} under {CONFIG_KEY!r}; known: "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**value)


def settings_of(hf_config) -> Optional[RestoreSettings]:
    """The RESTORE settings of a (top-level) HF config, or None when RESTORE was not asked for."""
    value = getattr(hf_config, CONFIG_KEY, None)
    return None if value is None else RestoreSettings.from_value(value)


def hf_overrides(num_tokens: int = 64, base: str = "divprune", keep_ratio: float = 0.5,
                 rule: str = "reference", calibrate: bool = True) -> dict:
    """The ``hf_overrides`` that turn RESTORE on for a supported vLLM model:
    ``LLM(model, hf_overrides=hf_overrides(num_tokens=64))``, or on the command line
    ``vllm serve MODEL --hf-overrides "$(python -c 'import json, restore_ext.integrations.vllm as r;
    print(json.dumps(r.hf_overrides(num_tokens=64)))')"``. Checked here, and again by the model in vLLM."""
    settings = RestoreSettings(num_tokens=num_tokens, base=base, keep_ratio=keep_ratio, rule=rule,
                               calibrate=calibrate)
    return {CONFIG_KEY: settings.to_dict(), **json.loads(json.dumps(MROPE_SWITCH))}
