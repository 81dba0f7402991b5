"""RESTORE for Hugging Face transformers LLaVA models: ``apply_restore(model)`` / ``remove_restore(model)``.

After ``apply_restore``, the model's own ``model(...)`` and ``model.generate(...)`` run RESTORE:

1. *Reduce*: after the projector, each image's N visual tokens become ``num_tokens``: ``num_tokens * keep_ratio``
   kept by the base method, the rest merged into anchors (:func:`restore_ext.reduce`); every output
   remembers ``size`` (original tokens it stands for) and ``position`` (original index it keeps).
2. *Preserve positions*: the language model sees the shortened sequence (text, reduced visual tokens in position
   order, text) with the position ids the tokens had in the full sequence; decode steps continue in that frame.
3. *Calibrate*: every decoder layer's attention is :func:`restore_ext.calibrated_attention`: prefill adds
   ``log(size)`` per key (layer 0: the uniform ``N / num_tokens`` for visual keys) and the RoPE distance table
   ``log(2 - mean_i cos(d * inv_freq_i))`` built from the model's own rotary ``inv_freq``; decode adds
   ``log(size)`` of the cached keys (and the table with ``decode_distance_bias=True``). Padding keys get -inf.

Mechanism (public extension points only, no copy of modeling code):

- the attention function is registered with ``AttentionInterface.register("restore", ...)`` and selected for the
  text model only via ``model.set_attn_implementation({"text_config": "restore"})``;
- a forward pre-hook on the inner ``LlavaModel`` (``register_forward_pre_hook(with_kwargs=True)``) runs the vision
  tower, reduces, and hands the unchanged ``LlavaModel.forward`` ``inputs_embeds`` / ``position_ids`` /
  ``attention_mask`` of the shortened sequence plus a ``restore_state`` keyword that transformers forwards untouched
  to every attention call (as it does for its own flash-attention kwargs);
- per-key state (``log(size)``, original positions) lives beside the KV cache (keyed by the cache object) and grows
  with it, checked against ``cache.get_seq_length()`` on every forward;
- ``model.generate`` gets a thin instance-level wrapper that rejects the generation modes that rewrite the cache
  behind the state's back (beam search, assisted decoding, chunked prefill, a pre-filled cache).

``remove_restore`` undoes all of it: hooks removed, the instance ``generate`` deleted, the text model's previous
attention implementation set back.

Supported: transformers >= 5.0, < 6 (tests pass on 5.0.0, 5.12.1 and 5.24.0); ``LlavaForConditionalGeneration`` and
``LlavaNextForConditionalGeneration`` whose language model is Llama, Mistral or Qwen2 with full (non-sliding)
attention and static RoPE (default / linear / llama3 / yarn); dynamic caches only. Outputs (logits, hidden
states) are those of the *shortened* sequence: its last position is still the prompt's last token.
"""
from __future__ import annotations

import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

import restore_ext
from restore_ext import ops
from restore_ext.attention_bias import distance_bias_table
from restore_ext.reduction import Reduced, kept_count, restore_reduce
from restore_ext.selectors import select

try:
    import transformers
    from transformers import AttentionInterface
    from transformers.cache_utils import Cache, DynamicCache
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "restore_ext.integrations.transformers needs transformers>=5,<6: pip install 'transformers>=5,<6'"
    ) from e

ATTN_IMPLEMENTATION = "restore"
SUPPORTED_TRANSFORMERS = (5, 6)  # [5, 6)
SUPPORTED_TEXT_MODELS = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_UNREACHABLE_POS = 1 << 40  # a key position no query reaches: its distance clamps to table[0] = 0


def _check_transformers_version() -> None:
    major = int(transformers.__version__.split(".")[0])
    if not SUPPORTED_TRANSFORMERS[0] <= major < SUPPORTED_TRANSFORMERS[1]:
        raise ImportError(
            f"restore_ext.integrations.transformers supports transformers>=5,<6, found {transformers.__version__}"
        )


_check_transformers_version()


# ---------------------------------------------------------------------------------------------------------------
# Selection + reduction
# ---------------------------------------------------------------------------------------------------------------
def _reduce_images(features: Tensor, num_tokens: int, base: str, keep_ratio: float, rule: str) -> Reduced:
    """(M, N, D) projector outputs of M images -> Reduced with ``min(num_tokens, N)`` tokens per image.

    RESTORE proper (``restore_ext.reduce``) when the budget holds both kept and merged tokens; the two ends of
    keep_ratio, which the demo compares against, are pure merging (R = 0) and pruning alone (R = num_out).
    """
    m, n, d = features.shape
    num_out = min(num_tokens, n)
    r = min(num_out, kept_count(num_out, keep_ratio))
    if 1 <= r < num_out:
        return restore_ext.reduce(features, num_out, base=base, keep_ratio=keep_ratio, rule=rule)
    if r == 0:
        return restore_reduce(features, features.new_empty((m, 0), dtype=torch.long), num_out, rule)
    # pruning alone: nothing merged, dropped tokens have no slot
    retained = select(features, r, base)
    source = torch.full((m, n), -1, dtype=torch.long, device=features.device)
    source.scatter_(1, retained, torch.arange(r, device=features.device).expand(m, r).contiguous())
    tokens = features.gather(1, retained[:, :, None].expand(m, r, d))
    return Reduced(tokens, torch.ones_like(retained), retained, source)


# ---------------------------------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RestoreState:
    """What one forward's attention calls need; handed to every attention module as ``restore_state``.

    Key tensors cover the whole KV cache after this forward's tokens are appended (Lk = cached + new)."""

    log_size: Tensor  # (B, Lk) float32: log(size) of each key for layers >= 1; -inf for padding
    log_size_first: Tensor  # (B, Lk) float32: layer 0's log(size) (visual keys uniform N / num_tokens)
    k_pos: Tensor  # (B, Lk) int64: original position of each key
    q_pos: Tensor  # (B, Lq) int64: original position of each query
    visual: Tensor  # (B, Lk) bool: key is a (reduced) visual token
    table: Optional[Tensor]  # (T,) float32 distance table, or None when this forward adds no distance bias
    bias_rows: Optional[Tensor]  # (B,) bool: rows that get the distance table (rows that hold a reduced image)
    calibrate: bool

    @property
    def num_keys(self) -> int:
        return self.k_pos.shape[1]

    def attention_bias_args(self, layer_idx: int):
        """(log_size, q_pos, k_pos, table) for ``calibrated_attention`` at layer ``layer_idx``."""
        log_size = self.log_size_first if layer_idx == 0 else self.log_size
        if self.table is None:
            return log_size, None, None, None
        k_pos = self.k_pos
        if self.bias_rows is not None and not bool(self.bias_rows.all()):
            k_pos = torch.where(self.bias_rows[:, None], k_pos, torch.full_like(k_pos, _UNREACHABLE_POS))
        return log_size, self.q_pos, k_pos, self.table


@dataclass
class _CacheRecord:
    """Per-key state of one KV cache, grown in step with it."""

    log_size: Tensor
    log_size_first: Tensor
    pos: Tensor
    visual: Tensor
    next_pos: Tensor  # (B,) original position of the next token
    reduced_rows: Tensor  # (B,) bool: rows whose prompt held a reduced image

    @property
    def length(self) -> int:
        return self.pos.shape[1]


class _Patch:
    """Everything apply_restore installed on one model, so remove_restore can take it off."""

    def __init__(self, inner, settings: dict, previous_attn: str):
        self.inner = inner
        self.settings = settings
        self.previous_attn = previous_attn
        self.records: "weakref.WeakKeyDictionary[Cache, _CacheRecord]" = weakref.WeakKeyDictionary()
        self.handles = []
        self.inv_freq: Tensor = inner.language_model.rotary_emb.inv_freq
        # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name deprecated until 5.40)
        params = inspect.signature(type(inner).forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._table: Optional[Tensor] = None

    def table(self, length: int, device) -> Tensor:
        if self._table is None or self._table.shape[0] < length or self._table.device != torch.device(device):
            size = 1 << max(10, (length - 1).bit_length())
            self._table = distance_bias_table(size, self.inv_freq.to(device))
        return self._table


# ---------------------------------------------------------------------------------------------------------------
# Attention function (registered in transformers' AttentionInterface)
# ---------------------------------------------------------------------------------------------------------------
def restore_attention_forward(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Optional[Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs,
):
    """transformers attention function: query (B, H, Lq, Dh), key/value (B, Hkv, Lk, Dh) with the cache included.
    Returns ((B, Lq, H, Dh), None)."""
    state: Optional[RestoreState] = kwargs.get("restore_state")
    name = type(module).__name__
    if state is None:
        raise RuntimeError(
            f"restore attention ({name}) was called without a restore_state: the language model must be run through "
            "the RESTORE-patched multimodal model (model(...) or model.generate(...)); call remove_restore(model) to "
            "use it otherwise"
        )
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"restore attention: {name} uses a sliding window, which RESTORE does not support")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(f"restore attention: {name} uses logit soft-capping or attention sinks, not supported")
    if dropout > 0.0 and module.training:
        raise ValueError("restore attention: attention dropout in training mode is not supported (call model.eval())")
    if not getattr(module, "is_causal", True):
        raise ValueError(f"restore attention: {name} is not causal; RESTORE supports causal decoders only")
    b, _, lq, _ = query.shape
    lk = key.shape[2]
    if lk != state.num_keys or lq != state.q_pos.shape[1] or b != state.k_pos.shape[0]:
        raise RuntimeError(
            f"restore attention: layer {getattr(module, 'layer_idx', '?')} got {lq} queries over {lk} keys (batch {b}) "
            f"but the RESTORE state describes {state.q_pos.shape[1]} over {state.num_keys} "
            f"(batch {state.k_pos.shape[0]}); "
            "the KV cache was changed outside RESTORE (only dynamic caches grown by the patched model are supported)"
        )
    log_size, q_pos, k_pos, table = state.attention_bias_args(getattr(module, "layer_idx", 1))
    out = ops.calibrated_attention(
        query.transpose(1, 2),
        key.transpose(1, 2),
        value.transpose(1, 2),
        log_size,
        q_pos,
        k_pos,
        table,
        causal=True,
        scale=scaling,
    )
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, restore_attention_forward)


# ---------------------------------------------------------------------------------------------------------------
# The pre-hook: vision tower -> reduction -> shortened sequence with preserved positions
# ---------------------------------------------------------------------------------------------------------------
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


def _image_features(inner, kw) -> Optional[list]:
    """Per-image projector outputs [(N_i, D)], or None when this forward carries no image."""
    mm = kw.get("mm_encoder_outputs") or {}
    out = mm.get("image")
    if out is None and kw.get("pixel_values") is not None and kw["pixel_values"].shape[0] > 0:
        extra = {}
        if kw.get("image_sizes") is not None:
            extra["image_sizes"] = kw["image_sizes"]
        out = inner.get_image_features(
            pixel_values=kw["pixel_values"],
            vision_feature_layer=kw.get("vision_feature_layer"),
            vision_feature_select_strategy=kw.get("vision_feature_select_strategy"),
            return_dict=True,
            **extra,
        )
    if out is None:
        return None
    feats = out.pooler_output
    return list(feats) if isinstance(feats, Tensor) else list(feats)


def _placeholder_mask(inner, input_ids, inputs_embeds) -> Tensor:
    token = inner.config.image_token_id
    if input_ids is not None:
        return input_ids == token
    ref = inner.get_input_embeddings()(torch.tensor(token, device=inputs_embeds.device))
    return (inputs_embeds == ref).all(-1)


class _Prefill:
    """The shortened sequence of one prefill with images."""

    def __init__(self, patch: _Patch, inner, kw: dict, features: list, past: Optional[_CacheRecord]):
        s = patch.settings
        input_ids, embeds = kw.get("input_ids"), kw.get("inputs_embeds")
        if embeds is None:
            embeds = inner.get_input_embeddings()(input_ids)
        bsz, seq, dim = embeds.shape
        dev = embeds.device
        mask2d = kw.get("attention_mask")
        valid = torch.ones(bsz, seq, dtype=torch.bool, device=dev)
        if mask2d is not None:
            valid = mask2d[:, -seq:].to(device=dev, dtype=torch.bool)
        pos = kw.get("position_ids")
        if pos is None:
            start = 0 if past is None else past.next_pos[:, None]
            pos = torch.arange(seq, device=dev)[None, :] + start
        if pos.dim() != 2:
            raise ValueError(f"apply_restore: position_ids must be 2-D (batch, seq), got {tuple(pos.shape)}")
        pos = pos.to(dev).long().expand(bsz, seq)

        # Assign placeholders to images in masked_scatter's order (row-major over batch, seq).
        ph = _placeholder_mask(inner, input_ids, embeds)
        rows, cols = ph.nonzero(as_tuple=True)
        lengths = [f.shape[0] for f in features]
        if rows.numel() != sum(lengths):
            raise ValueError(
                f"apply_restore: the prompt has {rows.numel()} image placeholder tokens but the images give "
                f"{sum(lengths)} features ({lengths})"
            )
        starts = torch.tensor([0] + lengths[:-1], device=dev).cumsum(0)
        ends = starts + torch.tensor(lengths, device=dev) - 1
        img_row, img_col = rows[starts], cols[starts]
        spans = cols[ends] - img_col + 1
        if not (bool((rows[ends] == img_row).all()) and bool((spans == torch.tensor(lengths, device=dev)).all())):
            raise ValueError("apply_restore: each image's placeholder tokens must be contiguous within one prompt")

        # Reduce, grouping images of equal token count into one batched call.
        embeds = embeds.clone()
        size = torch.ones(bsz, seq, dtype=torch.float32, device=dev)
        size_first = torch.ones(bsz, seq, dtype=torch.float32, device=dev)
        keep = ~ph
        visual = torch.zeros(bsz, seq, dtype=torch.bool, device=dev)
        self.tokens_before = sum(lengths)
        self.tokens_after = 0
        for n in sorted(set(lengths)):
            idx = [i for i, ln in enumerate(lengths) if ln == n]
            feats = torch.stack([features[i] for i in idx]).to(dev, embeds.dtype)
            red = _reduce_images(feats, s["num_tokens"], s["base"], s["keep_ratio"], s["rule"])
            k = red.position.shape[1]
            self.tokens_after += k * len(idx)
            sel = torch.tensor(idx, device=dev)
            r = img_row[sel][:, None].expand(-1, k)
            c = img_col[sel][:, None] + red.position.to(dev)
            embeds[r, c] = red.tokens.to(embeds.dtype)
            keep[r, c] = True
            visual[r, c] = True
            size[r, c] = red.size.to(dev, torch.float32)
            size_first[r, c] = n / k

        # Gather the kept tokens, left-padding rows that ended up shorter (different image counts per row).
        counts = keep.sum(1)
        length = int(counts.max())
        pad = length - counts
        kr, kc = keep.nonzero(as_tuple=True)
        slot = (keep.long().cumsum(1) - 1 + pad[:, None])[kr, kc]
        gather = torch.zeros(bsz, length, dtype=torch.long, device=dev)
        filled = torch.zeros(bsz, length, dtype=torch.bool, device=dev)
        gather[kr, slot] = kc
        filled[kr, slot] = True

        def take(t):
            return t.gather(1, gather)

        self.inputs_embeds = embeds.gather(1, gather[:, :, None].expand(bsz, length, dim))
        self.valid = take(valid) & filled
        self.pos = torch.where(self.valid, take(pos), torch.zeros_like(gather))
        neg_inf = torch.full((bsz, length), -math.inf, device=dev)
        if s["calibrate"]:
            self.log_size = torch.where(self.valid, take(size).log(), neg_inf)
            self.log_size_first = torch.where(self.valid, take(size_first).log(), neg_inf)
        else:
            self.log_size = torch.where(self.valid, torch.zeros_like(neg_inf), neg_inf)
            self.log_size_first = self.log_size
        self.visual = take(visual) & self.valid
        self.next_pos = pos[:, -1] + 1
        self.reduced_rows = torch.zeros(bsz, dtype=torch.bool, device=dev)
        self.reduced_rows[img_row] = True


def _check_kernel(device: torch.device) -> None:
    # A clear message instead of the dispatcher's when this build has no calibrated_attention for the device.
    key = {"cuda": "CUDA", "cpu": "CPU"}.get(device.type, device.type.upper())
    if not torch._C._dispatch_has_kernel_for_dispatch_key("restore::calibrated_attention", key):
        raise RuntimeError(
            f"apply_restore: this build of restore_ext has no calibrated_attention kernel for {device.type} "
            "(run the model on CPU, or rebuild restore_ext with that device's kernels)"
        )


def _make_pre_hook(patch: _Patch):
    def pre_hook(inner, args, kwargs):
        kw = _bind_kwargs(inner, args, kwargs)
        s = patch.settings
        if (kw.get("input_ids") is None) == (kw.get("inputs_embeds") is None):
            return args, kwargs  # let LlavaModel.forward raise its own error
        mask2d = kw.get("attention_mask")
        if mask2d is not None and mask2d.dim() != 2:
            raise ValueError(
                f"apply_restore: only 2-D (batch, seq) attention masks are supported, got {mask2d.dim()}-D"
            )
        use_cache = kw.get("use_cache")
        if use_cache is None:
            use_cache = getattr(inner.config.get_text_config(decoder=True), "use_cache", True)
        cache = kw.get("cache", kw.get("past_key_values"))
        kw.pop("past_key_values", None)
        if cache is not None and not isinstance(cache, DynamicCache):
            raise ValueError(
                f"apply_restore: only DynamicCache is supported (got {type(cache).__name__}); RESTORE keeps per-key "
                "state beside the cache and a static/offloaded/quantized cache is not tracked"
            )
        if cache is None and use_cache:
            cache = DynamicCache(config=inner.config.get_text_config(decoder=True))
        past = patch.records.get(cache) if cache is not None else None
        cached = cache.get_seq_length() if cache is not None else 0
        if cached and (past is None or past.length != cached):
            raise ValueError(
                f"apply_restore: the cache holds {cached} tokens that the RESTORE state does not describe "
                f"({'no state' if past is None else f'state of {past.length}'}); caches must be filled by the patched "
                "model, and not cropped, reordered (beam search) or reused across prompts"
            )

        embeds = kw.get("inputs_embeds")
        input_ids = kw.get("input_ids")
        ref = input_ids if input_ids is not None else embeds
        bsz, seq = ref.shape[:2]
        dev = ref.device
        _check_kernel(dev)
        features = _image_features(inner, kw)
        if features is not None:
            pre = _Prefill(patch, inner, kw, features, past)
            inputs_embeds, valid, q_pos = pre.inputs_embeds, pre.valid, pre.pos
            log_size, log_size_first, visual = pre.log_size, pre.log_size_first, pre.visual
            next_pos, reduced_rows, is_prefill = pre.next_pos, pre.reduced_rows, True
            if past is not None:
                reduced_rows = reduced_rows | past.reduced_rows
        else:  # text only: decode steps, or a prompt without images
            if embeds is None:
                embeds = inner.get_input_embeddings()(input_ids)
            inputs_embeds = embeds
            valid = torch.ones(bsz, seq, dtype=torch.bool, device=dev)
            if mask2d is not None:
                valid = mask2d[:, -seq:].to(device=dev, dtype=torch.bool)
            q_pos = kw.get("position_ids")
            if q_pos is None:
                start = past.next_pos[:, None] if past is not None else 0
                q_pos = torch.arange(seq, device=dev)[None, :] + start
            q_pos = q_pos.to(dev).long().expand(bsz, seq)
            log_size = torch.where(valid, 0.0, -math.inf).float()
            log_size_first = log_size
            visual = torch.zeros(bsz, seq, dtype=torch.bool, device=dev)
            next_pos = q_pos[:, -1] + 1
            reduced_rows = past.reduced_rows if past is not None else torch.zeros(bsz, dtype=torch.bool, device=dev)
            is_prefill = past is None

        if past is not None:
            if past.pos.shape[0] != bsz:
                raise ValueError(f"apply_restore: batch of {bsz} rows over a cache of {past.pos.shape[0]} rows")
            k_pos = torch.cat([past.pos, q_pos], 1)
            all_log_size = torch.cat([past.log_size, log_size], 1)
            all_log_size_first = torch.cat([past.log_size_first, log_size_first], 1)
            all_visual = torch.cat([past.visual, visual], 1)
        else:
            k_pos, all_log_size, all_log_size_first, all_visual = q_pos, log_size, log_size_first, visual

        want_table = s["calibrate"] and bool(reduced_rows.any()) and (is_prefill or s["decode_distance_bias"])
        table = patch.table(int(q_pos.max()) + 1, dev) if want_table else None
        state = RestoreState(
            all_log_size, all_log_size_first, k_pos, q_pos, all_visual, table, reduced_rows, s["calibrate"]
        )
        if cache is not None and use_cache:
            patch.records[cache] = _CacheRecord(
                all_log_size, all_log_size_first, k_pos, all_visual, next_pos, reduced_rows
            )

        kw.update(
            input_ids=None,
            inputs_embeds=inputs_embeds,
            pixel_values=None,
            mm_encoder_outputs=None,
            attention_mask=torch.cat([_past_valid(past), valid], 1).long() if past is not None else valid.long(),
            position_ids=q_pos,
            restore_state=state,
        )
        kw[patch.cache_kwarg] = cache
        if "use_cache" in kw or use_cache:
            kw["use_cache"] = use_cache
        return (), kw

    return pre_hook


def _past_valid(past: _CacheRecord) -> Tensor:
    return torch.isfinite(past.log_size)


def _reject_labels(model, args, kwargs):
    if kwargs.get("labels") is not None:
        raise ValueError(
            f"apply_restore: {type(model).__name__}(labels=...) is not supported: the shortened sequence no longer "
            "aligns with labels of the full prompt"
        )
    return None


def _make_generate(model, patch: _Patch):
    original = type(model).generate

    def generate(*args, **kwargs):
        cfg = kwargs.get("generation_config") or model.generation_config

        def opt(name, default=None):
            return kwargs.get(name, getattr(cfg, name, default))

        if (opt("num_beams", 1) or 1) > 1:
            raise ValueError("apply_restore: beam search (num_beams > 1) reorders the KV cache; not supported yet")
        if kwargs.get("assistant_model") is not None or opt("prompt_lookup_num_tokens") is not None:
            raise ValueError("apply_restore: assisted / prompt-lookup decoding crops the KV cache; not supported yet")
        if opt("prefill_chunk_size") is not None:
            raise ValueError("apply_restore: chunked prefill (prefill_chunk_size) is not supported")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache, Cache) and cache.get_seq_length() > 0:
            raise ValueError("apply_restore: continuing generate from a filled cache is not supported yet")
        return original(model, *args, **kwargs)

    generate.__doc__ = original.__doc__
    generate.__restore_patch__ = patch
    return generate


# ---------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------
def _supported_classes():
    classes = {}
    try:
        from transformers import LlavaForConditionalGeneration

        classes[LlavaForConditionalGeneration] = "llava"
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers import LlavaNextForConditionalGeneration

        classes[LlavaNextForConditionalGeneration] = "llava_next"
    except ImportError:  # pragma: no cover
        pass
    return classes


def _check_model(model) -> None:
    classes = _supported_classes()
    if type(model) not in classes:
        raise ValueError(
            f"apply_restore: {type(model).__name__} is not supported; supported: "
            f"{', '.join(c.__name__ for c in classes)} (transformers>=5,<6)"
        )
    tc = model.config.get_text_config(decoder=True)
    mt = getattr(tc, "model_type", None)
    if mt not in SUPPORTED_TEXT_MODELS:
        raise ValueError(
            f"apply_restore: {type(model).__name__} with text_config.model_type={mt!r} is not supported; supported "
            f"language models: {', '.join(SUPPORTED_TEXT_MODELS)}"
        )
    layer_types = getattr(tc, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        bad = sorted({t for t in layer_types if t != "full_attention"})
        raise ValueError(
            f"apply_restore: text_config.layer_types contains {bad}; RESTORE supports full attention layers only"
        )
    sliding = getattr(tc, "sliding_window", None)
    if sliding is not None and (layer_types is None or getattr(tc, "use_sliding_window", True)):
        raise ValueError(
            f"apply_restore: text_config.sliding_window={sliding} ({mt}): sliding-window attention is not supported "
            "(RESTORE's shortened sequence changes which keys a window covers); set it to None for full attention"
        )
    if getattr(tc, "attn_logit_softcapping", None) is not None:
        raise ValueError("apply_restore: text_config.attn_logit_softcapping is not supported")
    rope = getattr(tc, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"apply_restore: text_config.rope_parameters['rope_type']={rope_type!r} is not supported (its inverse "
            f"frequencies change with the sequence length); supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    lm = model.model.language_model
    if not isinstance(getattr(getattr(lm, "rotary_emb", None), "inv_freq", None), Tensor):
        raise ValueError(f"apply_restore: {type(lm).__name__} has no rotary_emb.inv_freq to build the distance table")
    if getattr(model, "_restore_patch", None) is not None:
        raise ValueError("apply_restore: RESTORE is already applied to this model; call remove_restore(model) first")


def apply_restore(
    model,
    num_tokens: int = 64,
    base: str = "divprune",
    keep_ratio: float = 0.5,
    rule: str = "reference",
    calibrate: bool = True,
    decode_distance_bias: bool = False,
):
    """Make ``model(...)`` and ``model.generate(...)`` of a transformers LLaVA model run RESTORE.

    num_tokens: visual tokens per image after reduction (an image with fewer keeps all of them).
    base: the base method that picks the ``round(num_tokens * keep_ratio)`` retained tokens: "divprune",
        "uniform", or a callable(features (M, N, D), k) -> (M, k) indices (see restore_ext.select).
    keep_ratio: retained share of ``num_tokens``; the rest are merged anchors. 1.0 = pruning alone (no merge).
    rule: anchor rule of the merge, "reference" (authors' code) or "dpc" (SPEC §2).
    calibrate: add log(size) and the RoPE distance table to attention logits. False keeps only the padding mask
        (reduction + position preservation alone).
    decode_distance_bias: also add the distance table during decode (the authors add log(size) only).
    Returns the model (patched in place).
    """
    _check_model(model)
    if not isinstance(num_tokens, int) or num_tokens < 1:
        raise ValueError(f"apply_restore: num_tokens must be a positive int, got {num_tokens!r}")
    if not 0.0 <= float(keep_ratio) <= 1.0:
        raise ValueError(f"apply_restore: keep_ratio must lie in [0, 1], got {keep_ratio}")
    if rule not in ("reference", "dpc"):
        raise ValueError(f'apply_restore: rule must be "reference" or "dpc", got {rule!r}')
    if not (callable(base) or base in ("divprune", "uniform")):
        raise ValueError(
            f"apply_restore: base must be 'divprune', 'uniform' or a callable(features, k) -> indices, got {base!r} "
            "('cls' needs the vision tower's [CLS] attention, which this integration does not capture yet)"
        )
    inner = model.model
    tc = model.config.get_text_config(decoder=True)
    settings = dict(
        num_tokens=num_tokens,
        base=base,
        keep_ratio=float(keep_ratio),
        rule=rule,
        calibrate=bool(calibrate),
        decode_distance_bias=bool(decode_distance_bias),
    )
    patch = _Patch(inner, settings, tc._attn_implementation)
    patch.handles.append(inner.register_forward_pre_hook(_make_pre_hook(patch), with_kwargs=True))
    patch.handles.append(model.register_forward_pre_hook(_reject_labels, with_kwargs=True))
    model.generate = _make_generate(model, patch)
    model.set_attn_implementation({"text_config": ATTN_IMPLEMENTATION})
    model._restore_patch = patch
    return model


def remove_restore(model):
    """Undo :func:`apply_restore`: hooks removed, ``generate`` and the text model's attention implementation as
    before. Returns the model."""
    patch = getattr(model, "_restore_patch", None)
    if patch is None:
        raise ValueError(f"remove_restore: RESTORE is not applied to this {type(model).__name__}")
    for h in patch.handles:
        h.remove()
    if "generate" in vars(model):
        del model.generate
    model.set_attn_implementation({"text_config": patch.previous_attn})
    del model._restore_patch
    return model


def is_restore_applied(model) -> bool:
    return getattr(model, "_restore_patch", None) is not None


__all__ = ["RestoreState", "apply_restore", "remove_restore", "is_restore_applied", "restore_attention_forward"]
