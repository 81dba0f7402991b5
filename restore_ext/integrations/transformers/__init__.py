"""RESTORE for Hugging Face transformers multimodal models: ``apply_restore(model)`` / ``remove_restore(model)``.

After ``apply_restore``, the model's own ``model(...)`` and ``model.generate(...)`` run RESTORE:

1. *Reduce*: after the projector, each image's N visual tokens become ``num_tokens``: ``num_tokens * keep_ratio``
   kept by the base method, the rest merged into anchors (:func:`restore_ext.reduce`); every output
   remembers ``size`` (original tokens it stands for) and ``position`` (original index it keeps).
2. *Preserve positions*: the language model sees the shortened sequence (text, reduced visual tokens in position
   order, text) with the position ids the tokens had in the full sequence; decode steps continue in that frame.
   Columns that are padding in every row of a batch are dropped.
3. *Calibrate*: every decoder layer's attention is :func:`restore_ext.calibrated_attention`: prefill adds
   ``log(size)`` per key (layer 0: the uniform ``N / num_tokens`` for visual keys) and the RoPE distance table
   built from the model's own rotary ``inv_freq``; decode adds ``log(size)`` of the cached keys (and the table with
   ``decode_distance_bias=True``). Padding keys get -inf.

Mechanism (public extension points only, no copy of modeling code), one module each:

- ``settings``: ``RestoreSettings``, the checked arguments; ``visual_reduction``: reduce items, carry extras;
- ``attention``: the attention function, registered with ``AttentionInterface.register("restore", ...)`` and
  selected for the text model only via ``model.set_attn_implementation({"text_config": "restore"})``;
- ``shortening``: the shortened prompt, one path for prefills and decode steps;
- ``state``: ``RestoreState`` handed to every attention call as ``restore_state`` (transformers forwards it
  untouched, as it does its own flash-attention kwargs), and ``KeyState``, the per-key state kept beside each KV
  cache (keyed by the cache object) and checked against ``cache.get_seq_length()`` on every forward;
- ``hooks``: a forward pre-hook on the inner multimodal model that encodes, reduces and hands its unchanged forward
  the shortened prompt; a forward hook that raises if any layer's attention did not run RESTORE (the attention
  implementation changed after ``apply_restore``); ``generate_guard``: ``model.generate`` refusing the generation
  modes that rewrite the cache behind the state's back, by every route;
- ``adapter`` / ``adapters``: what differs per model family (``adapters/llava.py``; see ``adapters/__init__.py``);
- ``api``: ``apply_restore`` / ``remove_restore`` / ``is_restore_applied``.

A patched model can be deep-copied and pickled: hooks and ``generate`` find the patch on the model they are called
with. ``output_attentions=True`` raises (the fused attention forms no weights). ``remove_restore`` undoes all of it.

Supported: transformers >= 5.0, < 6 (the integration tests pass on 5.0.0, 5.12.1 and 5.24.0);
``LlavaForConditionalGeneration`` and ``LlavaNextForConditionalGeneration`` whose language model is Llama, Mistral
or Qwen2 with full (non-sliding) attention and static RoPE (default / linear / llama3 / yarn);
``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration`` (images and videos, M-RoPE, Qwen3-VL's
DeepStack; see ``adapters/qwen_vl.py``; tested on 5.12.1 and 5.24.0, refused on 5.0 whose Qwen code numbers
prompts differently); dynamic caches; greedy decoding and sampling. Outputs (logits, hidden states) are those of
the *shortened* sequence: its last position is still the prompt's last token.
"""
try:
    import transformers
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "restore_ext.integrations.transformers needs transformers>=5,<6: pip install 'transformers>=5,<6'"
    ) from e

SUPPORTED_TRANSFORMERS = (5, 6)  # [5, 6)
if not SUPPORTED_TRANSFORMERS[0] <= int(transformers.__version__.split(".")[0]) < SUPPORTED_TRANSFORMERS[1]:
    raise ImportError(
        f"restore_ext.integrations.transformers supports transformers>=5,<6, found {transformers.__version__}"
    )

from .api import apply_restore, is_restore_applied, remove_restore  # noqa: E402
from .attention import ATTN_IMPLEMENTATION, restore_attention_forward  # noqa: E402  (registers "restore")
from .settings import RestoreSettings  # noqa: E402
from .state import KeyState, RestoreState  # noqa: E402

__all__ = [
    "ATTN_IMPLEMENTATION",
    "KeyState",
    "RestoreSettings",
    "RestoreState",
    "apply_restore",
    "is_restore_applied",
    "remove_restore",
    "restore_attention_forward",
]
