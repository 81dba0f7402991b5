"""``model.generate`` while RESTORE is applied: greedy decoding and sampling run; every mode that rewrites the KV cache
behind RESTORE's per-key state, or splits an image across forwards, is refused, by whatever route it is asked for
(keywords, a positional ``GenerationConfig``, ``generation_config=``, the model's own ``generation_config``): the
guard resolves the effective configuration with the model's own ``_prepare_generation_config`` and asks it for its
generation mode, as ``generate`` itself does."""
from __future__ import annotations

import inspect

from transformers.cache_utils import Cache

from .hooks import OUTPUT_ATTENTIONS_ERROR

SUPPORTED_MODES = ("greedy_search", "sample")


class GenerateGuard:
    """The instance attribute ``model.generate``: checks the request, then runs the class's own ``generate`` on the
    model it belongs to. It holds that model (no closure), so a deepcopy or pickle of the model gets a guard of the
    copy, and it looks the patch up on the model at each call."""

    def __init__(self, model):
        self.model = model

    def __call__(self, *args, **kwargs):
        model = self.model
        if getattr(model, "_restore_patch", None) is None:
            raise RuntimeError("apply_restore: this generate guard outlived remove_restore; call model.generate")
        check_generation(model, args, kwargs)
        return type(model).generate(model, *args, **kwargs)


def _refuse(what: str, why: str):
    raise ValueError(f"apply_restore: {what} is not supported: {why}")


def check_generation(model, args: tuple, kwargs: dict) -> None:
    """ValueError unless this ``generate`` call is greedy decoding or sampling over a fresh dynamic cache."""
    signature = inspect.signature(type(model).generate)
    try:
        bound = signature.bind(model, *args, **kwargs).arguments
    except TypeError:
        return  # generate reports a malformed call itself
    var_kw = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    extra = dict(bound.get(var_kw, {})) if var_kw else {}
    if bound.get("custom_generate") is not None:
        _refuse("custom_generate", "a custom decoding loop may rewrite the KV cache behind RESTORE's per-key state")
    extra.pop("trust_remote_code", None)
    config, _ = model._prepare_generation_config(bound.get("generation_config"), **extra)

    assisted = {
        "assistant_model": bound.get("assistant_model"),
        "prompt_lookup_num_tokens": config.prompt_lookup_num_tokens,
        "assistant_early_exit": getattr(config, "assistant_early_exit", None),
        "use_mtp": getattr(config, "use_mtp", None) or None,
    }
    asked = [name for name, value in assisted.items() if value is not None]
    if asked:
        _refuse(
            f"assisted / prompt-lookup decoding ({', '.join(asked)})",
            "verifying candidate tokens crops the KV cache, which RESTORE's per-key state does not follow",
        )
    mode = config.get_generation_mode(None)
    mode = getattr(mode, "value", mode)
    if mode not in SUPPORTED_MODES:
        if "beam" in mode:
            _refuse(
                f"{mode.replace('_', ' ')} (num_beams={config.num_beams})",
                "beam search reorders the KV cache behind RESTORE's per-key state; use greedy decoding or sampling",
            )
        _refuse(f"generation mode {mode.replace('_', ' ')!r}", "only greedy decoding and sampling run with RESTORE")
    if config.prefill_chunk_size is not None:
        _refuse(
            f"chunked prefill (prefill_chunk_size={config.prefill_chunk_size})",
            "it would split an image's placeholder tokens across forwards before RESTORE reduces them",
        )
    if config.cache_implementation not in (None, "dynamic"):
        _refuse(
            f"cache_implementation={config.cache_implementation!r}",
            "RESTORE keeps per-key state beside a DynamicCache and follows no other cache",
        )
    if config.output_attentions:
        raise ValueError(OUTPUT_ATTENTIONS_ERROR)
    cache = extra.get("cache", extra.get("past_key_values"))
    if isinstance(cache, Cache) and cache.get_seq_length() > 0:
        _refuse("continuing generate from a filled cache", "the cache's keys must come from this generate's prompt")
