"""RESTORE models for lmms-eval (``pip install "restore_ext[eval]"``).

lmms-eval finds them through the ``lmms_eval.models`` entry point that restore_ext declares (pyproject.toml),
so they work from its CLI and from ``lmms_eval.evaluator.simple_evaluate`` alike::

    python -m lmms_eval --model restore_llava_hf --tasks pope --batch_size 1 \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,num_tokens=64,base=divprune,keep_ratio=0.5

Each model is lmms-eval's own class for its family (chat and simple form: ``restore_llava_hf`` is
``llava_hf``, ``restore_qwen2_5_vl`` is ``qwen2_5_vl``, ``restore_qwen3_vl`` is ``qwen3_vl``) with
:func:`restore_ext.integrations.transformers.apply_restore` applied to the model once it is loaded. RESTORE's
settings come in ``--model_args`` beside the class's own:

- ``num_tokens`` (visual tokens per image after reduction) or ``ratio`` (K = round(ratio * N) per image;
  for models with dynamic resolution, once apply_restore supports them), at most one of the two;
- ``base`` (``divprune`` / ``uniform``), ``keep_ratio`` (share kept by the base method; ``keep_ratio=1.0,
  calibrate=False`` is the base method alone), ``rule`` (``reference`` / ``dpc``), ``calibrate``,
  ``decode_distance_bias``.

lmms-eval turns an exception inside ``generate`` into an empty answer and goes on; these classes raise it
after the batch instead, so a RESTORE error fails the run rather than scoring as wrong answers.
With transformers 5, lmms-eval 0.7.3's ``llava_hf`` needs an explicit ``device_map`` (``cpu``, ``cuda:0`` or
``auto``) in ``--model_args``: its default ``""`` is refused by ``from_pretrained``.
The Qwen models need apply_restore's Qwen2.5-VL / Qwen3-VL support; until restore_ext has it, loading them
raises apply_restore's "not supported" error.
"""
from __future__ import annotations

import importlib
import inspect

RESTORE_ARGS = ("num_tokens", "ratio", "base", "keep_ratio", "rule", "calibrate", "decode_distance_bias")

# model id -> (lmms-eval model id it extends, our chat class, our simple class)
MODELS = {
    "restore_llava_hf": ("llava_hf", "RestoreLlavaHf", "RestoreLlavaHfSimple"),
    "restore_qwen2_5_vl": ("qwen2_5_vl", "RestoreQwen2_5_VL", "RestoreQwen2_5_VLSimple"),
    "restore_qwen3_vl": ("qwen3_vl", "RestoreQwen3_VL", "RestoreQwen3_VLSimple"),
}
# our class -> lmms-eval's class it extends (module, name)
_BASES = {
    "RestoreLlavaHf": ("lmms_eval.models.chat.llava_hf", "LlavaHf"),
    "RestoreLlavaHfSimple": ("lmms_eval.models.simple.llava_hf", "LlavaHf"),
    "RestoreQwen2_5_VL": ("lmms_eval.models.chat.qwen2_5_vl", "Qwen2_5_VL"),
    "RestoreQwen2_5_VLSimple": ("lmms_eval.models.simple.qwen2_5_vl", "Qwen2_5_VL"),
    "RestoreQwen3_VL": ("lmms_eval.models.chat.qwen3_vl", "Qwen3_VL"),
    "RestoreQwen3_VLSimple": ("lmms_eval.models.simple.qwen3_vl", "Qwen3_VL"),
}


def manifests():
    """The ``lmms_eval.models`` entry point: one manifest per model id, chat and simple class paths."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=mid, chat_class_path=f"{__name__}.{chat}", simple_class_path=f"{__name__}.{simple}")
        for mid, (_, chat, simple) in MODELS.items()
    ]


def restore_settings(model_args: dict) -> dict:
    """Pops RESTORE's settings out of a class's keyword arguments (lmms-eval has already typed them) and
    checks the ones apply_restore cannot: the budget is ``num_tokens`` or ``ratio``, not both."""
    from restore_ext.integrations.transformers import apply_restore

    settings = {k: model_args.pop(k) for k in RESTORE_ARGS if k in model_args}
    if "num_tokens" in settings and "ratio" in settings:
        raise ValueError(
            f"restore lmms-eval model: give num_tokens or ratio, not both (got num_tokens={settings['num_tokens']!r}, "
            f"ratio={settings['ratio']!r})"
        )
    accepted = inspect.signature(apply_restore).parameters
    unknown = [k for k in settings if k not in accepted]
    if unknown:
        raise ValueError(
            f"restore lmms-eval model: this restore_ext's apply_restore does not take {unknown} "
            f"(it takes {[k for k in RESTORE_ARGS if k in accepted]}); ratio= comes with dynamic-resolution models"
        )
    return settings


def _record_errors(model, errors: list) -> None:
    """Wraps the patched model's ``generate`` so an exception is remembered before lmms-eval swallows it."""
    patched = model.generate

    def generate(*args, **kwargs):
        try:
            return patched(*args, **kwargs)
        except Exception as e:
            errors.append(e)
            raise

    generate.__doc__ = patched.__doc__
    model.generate = generate  # an instance attribute, as apply_restore's own; remove_restore deletes it


def _restore_class(name: str, base: type) -> type:
    def __init__(self, *args, **kwargs):
        from restore_ext.integrations.transformers import apply_restore

        settings = restore_settings(kwargs)
        base.__init__(self, *args, **kwargs)
        self.restore_settings = settings
        self._restore_errors = []
        model = self.model  # lmms-eval's property: the model unwrapped from accelerate
        apply_restore(model, **settings)
        _record_errors(model, self._restore_errors)

    def generate_until(self, requests):
        out = base.generate_until(self, requests)
        if self._restore_errors:
            first = self._restore_errors[0]
            count = len(self._restore_errors)
            self._restore_errors.clear()
            raise RuntimeError(
                f"{name}: model.generate failed under RESTORE for {count} request(s) (lmms-eval would have scored "
                f"them as empty answers); first error: {type(first).__name__}: {first}"
            ) from first
        return out

    doc = f"lmms-eval's {base.__module__}.{base.__name__} with RESTORE applied after loading (see {__name__})."
    return type(name, (base,), {"__init__": __init__, "generate_until": generate_until, "__module__": __name__,
                                "__qualname__": name, "__doc__": doc})


def __getattr__(name: str):
    # Classes are built on first use: importing one family's lmms-eval module must not need another's extras.
    if name not in _BASES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, base_name = _BASES[name]
    cls = _restore_class(name, getattr(importlib.import_module(module), base_name))
    globals()[name] = cls
    return cls


__all__ = ["MODELS", "RESTORE_ARGS", "manifests", "restore_settings", *_BASES]
