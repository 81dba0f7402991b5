"""What ``apply_restore`` installs: the ``Patch`` record and the forward hooks.

The hooks are module-level functions that find the patch on the module they are called with
(``module._restore_patch``), never closures over one model: a ``copy.deepcopy`` or a pickle of a patched model
carries hooks that act on the copy.
"""
from __future__ import annotations

import inspect
import weakref

import torch
from transformers.cache_utils import DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention import ATTN_IMPLEMENTATION
from .shortening import shorten_prompt
from .state import RestoreState

OUTPUT_ATTENTIONS_ERROR = (
    "apply_restore: output_attentions=True is not supported: RESTORE's fused calibrated_attention never forms the "
    "attention matrix, so it returns no attention weights (call remove_restore(model) to get them from the "
    "unreduced model)"
)


class Patch:
    """Everything apply_restore installed on one model, so remove_restore can take it off.

    Picklable and deep-copyable: the per-cache key state and the cached distance table are not carried over (a copy
    starts without caches). A callable ``base`` must itself be picklable for the model to pickle."""

    def __init__(self, adapter, settings, previous_attn, cache_kwarg: str, num_layers: int):
        self.adapter = adapter
        self.settings = settings
        self.previous_attn = previous_attn
        self.cache_kwarg = cache_kwarg  # transformers 5.x renamed forward's `past_key_values` to `cache`
        self.num_layers = num_layers
        self.handles = []
        self.records = weakref.WeakKeyDictionary()  # cache -> KeyState
        self._tables = {}  # device -> distance table

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["records"], state["_tables"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.records = weakref.WeakKeyDictionary()
        self._tables = {}

    def table(self, inner, length: int, device: torch.device):
        """The adapter's distance table covering distances < ``length`` (grown in powers of two)."""
        table = self._tables.get(device)
        if table is None or table.shape[-1] < length:
            table = self.adapter.distance_table(inner, 1 << max(10, (length - 1).bit_length()), device)
            self._tables[device] = table
        return table


def _bind_kwargs(module, args, kwargs) -> dict:
    if not args:
        return dict(kwargs)
    params = [p for p in inspect.signature(type(module).forward).parameters.values() if p.name != "self"]
    bound = dict(kwargs)
    for p, a in zip(params, args):
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            raise TypeError(f"{type(module).__name__}.forward: too many positional arguments")
        bound[p.name] = a
    return bound


_KERNEL_FOUND = set()  # device types whose calibrated_attention kernel was found (the query costs each forward)


def _check_kernel(device: torch.device) -> None:
    # A clear message instead of the dispatcher's when this build has no calibrated_attention for the device.
    if device.type in _KERNEL_FOUND:
        return
    key = {"cuda": "CUDA", "cpu": "CPU"}.get(device.type, device.type.upper())
    if torch._C._dispatch_has_kernel_for_dispatch_key("restore::calibrated_attention", key):
        _KERNEL_FOUND.add(device.type)
    else:
        raise RuntimeError(
            f"apply_restore: this build of restore_ext has no calibrated_attention kernel for {device.type} "
            "(run the model on CPU, or rebuild restore_ext with that device's kernels)"
        )


def _check_request(text_config, kw: dict) -> None:
    mask = kw.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise ValueError(f"apply_restore: only 2-D (batch, seq) attention masks are supported, got {mask.dim()}-D")
    # transformers' output capture reads the keyword first, then the text config
    wants = kw["output_attentions"] if "output_attentions" in kw else getattr(text_config, "output_attentions", False)
    if wants:
        raise ValueError(OUTPUT_ATTENTIONS_ERROR)


def _attention_changed(text_config, layers) -> RuntimeError:
    impl = text_config._attn_implementation
    return RuntimeError(
        f"apply_restore: RESTORE's calibrated attention would not run in layers {layers}: the text model's attention "
        f"implementation is {impl!r}; was it changed after apply_restore? It must stay {ATTN_IMPLEMENTATION!r}, or "
        "the output has the shortened sequence without calibration. Call remove_restore(model) before "
        "set_attn_implementation(...), then apply_restore again if wanted."
    )


def _attention_is_transformers_own(text_config) -> bool:
    """Whether the text model's attention implementation is one of transformers' own (eager, sdpa, flash, flex):
    then RESTORE's cannot run. A user-registered function may wrap ours; the forward hook checks that it did."""
    impl = text_config._attn_implementation
    if impl == ATTN_IMPLEMENTATION:
        return False
    try:
        function = ALL_ATTENTION_FUNCTIONS[impl]
    except KeyError:  # "eager" is not in the mapping (each model has its own), nor is an unloaded hub kernel
        return True
    return getattr(function, "__module__", "").startswith("transformers")


def _cache_and_past(patch: Patch, text_config, kw: dict):
    """(cache, use_cache, KeyState of what the cache holds or None), refusing caches RESTORE cannot follow."""
    use_cache = kw.get("use_cache")
    if use_cache is None:
        use_cache = getattr(text_config, "use_cache", True)
    cache = kw.get("cache", kw.get("past_key_values"))
    if cache is not None and not isinstance(cache, DynamicCache):
        raise ValueError(
            f"apply_restore: only DynamicCache is supported (got {type(cache).__name__}); RESTORE keeps per-key "
            "state beside the cache and a static/offloaded/quantized cache is not tracked"
        )
    if cache is None and use_cache:
        cache = DynamicCache(config=text_config)
    past = patch.records.get(cache) if cache is not None else None
    cached = cache.get_seq_length() if cache is not None else 0
    if cached and (past is None or past.length != cached):
        raise ValueError(
            f"apply_restore: the cache holds {cached} tokens that the RESTORE state does not describe "
            f"({'no state' if past is None else f'state of {past.length}'}); caches must be filled by the patched "
            "model, and not cropped, reordered (beam search) or reused across prompts"
        )
    if not cached:
        past = None
    return cache, use_cache, past


def restore_pre_hook(inner, args, kwargs):
    """Forward pre-hook of the inner multimodal model: encode and reduce the visual inputs, and hand the unchanged
    forward the shortened prompt with its full-prompt positions and a ``restore_state`` keyword, which transformers
    forwards untouched to every attention call (as it does for its own flash-attention kwargs)."""
    patch: Patch = inner._restore_patch
    adapter, settings = patch.adapter, patch.settings
    kw = _bind_kwargs(inner, args, kwargs)
    input_ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
    if (input_ids is None) == (embeds is None):
        return args, kwargs  # the model's own forward raises its error
    text_config = inner.config.get_text_config(decoder=True)  # once: it walks the sub-configs
    _check_request(text_config, kw)
    if _attention_is_transformers_own(text_config):
        raise _attention_changed(text_config, "all")
    cache, use_cache, past = _cache_and_past(patch, text_config, kw)
    if embeds is None:
        embeds = inner.get_input_embeddings()(input_ids)
    _check_kernel(embeds.device)
    bsz, seq = embeds.shape[:2]
    if past is not None and past.batch != bsz:
        raise ValueError(f"apply_restore: batch of {bsz} rows over a cache of {past.batch} rows")
    mask = kw.get("attention_mask")
    valid = torch.ones(bsz, seq, dtype=torch.bool, device=embeds.device)
    if mask is not None:
        valid = mask[:, -seq:].to(device=embeds.device, dtype=torch.bool)

    visual = adapter.visual_inputs(inner, kw, input_ids, embeds)
    positions = adapter.positions(inner, kw, input_ids, valid, None if past is None else past.next_pos, visual)
    short = shorten_prompt(embeds, valid, positions, visual, settings, adapter.next_position(positions, valid))
    keys = short.keys if past is None else past.then(short.keys)

    prefill = past is None or short.has_visual
    want_table = settings.calibrate and keys.any_reduced and (prefill or settings.decode_distance_bias)
    table = patch.table(inner, int(keys.pos.max()) + 1, embeds.device) if want_table else None
    state = RestoreState(
        keys.log_size, keys.log_size_first, keys.pos, short.keys.pos, keys.visual, table, keys.reduced_rows,
        settings.calibrate, prompt=short,
    )
    if cache is not None and use_cache:
        patch.records[cache] = keys

    kw.pop("past_key_values", None)
    kw.update({name: None for name in adapter.cleared_inputs})
    kw.update(
        input_ids=None,
        inputs_embeds=short.inputs_embeds,
        attention_mask=keys.valid.long(),
        position_ids=adapter.model_position_ids(short.keys.pos),
        restore_state=state,
    )
    kw.update(adapter.forward_overrides(inner, short, keys))
    kw[patch.cache_kwarg] = cache
    if "use_cache" in kw or use_cache:
        kw["use_cache"] = use_cache
    return (), kw


def check_layers_hook(inner, args, kwargs, output):
    """Forward hook of the inner model: every decoder layer's attention must have run RESTORE's calibrated attention
    on this forward's state. It did not when the attention implementation was changed after apply_restore
    (``model.set_attn_implementation(...)``): the sequence would be shortened without calibration, silently."""
    state = kwargs.get("restore_state")
    if state is None:
        return None
    missing = sorted(set(range(inner._restore_patch.num_layers)) - state.layers_run)
    if missing:
        raise _attention_changed(inner.config.get_text_config(decoder=True), missing)
    return None


def reject_labels(model, args, kwargs):
    """Forward pre-hook of the outer model: labels of the full prompt do not align with the shortened sequence."""
    if _bind_kwargs(model, args, kwargs).get("labels") is not None:
        raise ValueError(
            f"apply_restore: {type(model).__name__}(labels=...) is not supported: the shortened sequence no longer "
            "aligns with labels of the full prompt"
        )
    return None
