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
- ``base`` (``divprune`` / ``uniform``; for LLaVA models also the paper's ``vispruner`` / ``holov`` and ``cls``,
  which rank by the vision tower's [CLS] attention), ``keep_ratio`` (share kept by the base method; ``keep_ratio=1.0,
  calibrate=False`` is the base method alone), ``rule`` (``reference`` / ``dpc``), ``calibrate``,
  ``decode_distance_bias``.

lmms-eval turns an exception inside ``generate`` into an empty answer and goes on; these classes raise it
after the batch instead, so a RESTORE error fails the run rather than scoring as wrong answers.
With transformers 5, lmms-eval 0.7.3's ``llava_hf`` needs an explicit ``device_map`` (``cpu``, ``cuda:0`` or
``auto``) in ``--model_args``: its default ``""`` is refused by ``from_pretrained``.
The Qwen models go through apply_restore's Qwen2.5-VL / Qwen3-VL adapters, calibrated with
calibrated_attention's M-RoPE form (docs/ops.md §5b).
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


# The paper's benchmarks as lmms-eval names them, and the metric each row of the paper reports (lmms-eval's
# numbers: fractions for most, MME's perception score as a sum, MMBench already in percent).
PAPER_TASKS = {
    "gqa": "exact_match", "mmbench_en_dev": "gpt_eval_score", "mme": "mme_perception_score", "pope": "pope_f1_score",
    "scienceqa_img": "exact_match", "seedbench": "seed_image", "textvqa_val": "exact_match",
    "ocrbench": "ocrbench_accuracy", "mmbench_en_dev_static": "gpt_eval_score",
}


def _headline(task: str, metrics: dict):
    """(name, value) of a task's headline metric in lmms-eval's results: PAPER_TASKS', else its first number."""
    want = PAPER_TASKS.get(task)
    for key, value in metrics.items():
        name = key.split(",")[0]
        if isinstance(value, (int, float)) and not name.endswith("_stderr") and want in (None, name):
            return name, float(value)
    return None, None


def summary_table(runs: dict) -> str:
    """Markdown table of lmms-eval runs ``{variant: results}`` (``results`` = the "results" entry of
    simple_evaluate's output or of a *_results.json): one row per variant, one column per task (its headline
    metric), and the paper's average relative score, mean over tasks of variant / full * 100, when a variant
    named "full" is present."""
    tasks = sorted({t for res in runs.values() for t in res})
    cells = {v: {t: _headline(t, res[t]) for t in res} for v, res in runs.items()}
    names = {t: next((c[t][0] for c in cells.values() if t in c and c[t][0]), "?") for t in tasks}
    head = "| variant | " + " | ".join(f"{t} ({names[t]})" for t in tasks) + " | avg. relative to full |"
    lines = [head, "|" + "---|" * (len(tasks) + 2)]
    full = cells.get("full", {})
    for variant, row in cells.items():
        values = [row.get(t, (None, None))[1] for t in tasks]
        ratios = [v / full[t][1] for t, v in zip(tasks, values)
                  if v is not None and t in full and full[t][1] not in (None, 0.0)]
        rel = f"{100 * sum(ratios) / len(ratios):.1f} %" if full and len(ratios) == len(tasks) else "n/a"
        shown = ["" if v is None else f"{v:.4g}" for v in values]
        lines.append(f"| {variant} | " + " | ".join(shown) + f" | {rel} |")
    return "\n".join(lines)


def _summarize_folder(out_dir: str) -> str:
    """summary_table over eval_paper.sh's folders OUT/<variant>/**/*_results.json (the newest per variant)."""
    import glob
    import json
    import os

    runs = {}
    for variant in sorted(os.listdir(out_dir)):
        files = sorted(glob.glob(os.path.join(out_dir, variant, "**", "*_results.json"), recursive=True),
                       key=os.path.getmtime)
        if files:
            with open(files[-1]) as f:
                runs[variant] = json.load(f)["results"]
    def key(v):  # full first, then by budget, the base method alone before RESTORE
        kind, _, budget = v.rpartition("-")
        return (0, 0, "") if v == "full" else (1, int(budget) if budget.isdigit() else 1 << 30, kind)

    return summary_table({v: runs[v] for v in sorted(runs, key=key)})


def __getattr__(name: str):
    # Classes are built on first use: importing one family's lmms-eval module must not need another's extras.
    if name not in _BASES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, base_name = _BASES[name]
    cls = _restore_class(name, getattr(importlib.import_module(module), base_name))
    globals()[name] = cls
    return cls


if __name__ == "__main__":  # python -m restore_ext.integrations.lmms_eval OUT_DIR (scripts/eval_paper.sh)
    import sys

    print(_summarize_folder(sys.argv[1]))

__all__ = ["MODELS", "PAPER_TASKS", "RESTORE_ARGS", "manifests", "restore_settings", "summary_table", *_BASES]
