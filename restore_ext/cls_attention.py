"""The [CLS] token's attention to every token of a vision-tower layer, without eager attention.

VisPruner, HoloV and the "cls" base rank patches by how much the [CLS] query attends to them in one layer of the
vision tower (mean over heads). Peers get that row by switching the whole tower to eager attention and asking
for every layer's full L x L weights. Here a forward pre-hook on the chosen encoder layer takes its input and
recomputes only what the row needs with the layer's own modules: ``layer_norm1``, the [CLS] query through
``q_proj`` (one token) and the keys through ``k_proj``, then ``softmax(q k^T * scale + mask)`` in float32 as the
eager kernel does it. The tower itself keeps running SDPA / flash attention; the extra cost is one key
projection of that layer.

Works with CLIP-style encoder layers (``layer_norm1``, ``self_attn.{q_proj,k_proj,num_heads,head_dim,scale}``),
which is what LLaVA-1.5 and LLaVA-NeXT use. A tower without a [CLS] token (SigLIP, Qwen's) has no such row:
:func:`capture_cls_attention` refuses it.
"""
from typing import Optional

import torch
from torch import Tensor, nn


def cls_attention_row(layer: nn.Module, hidden_states: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
    """The attention weights of query 0 ([CLS]) of ``layer`` given its input ``hidden_states`` (B, L, C):
    (B, L) float32, mean over heads, each row summing to 1 (the [CLS] key included)."""
    attn = layer.self_attn
    h = layer.layer_norm1(hidden_states)
    b, length, _ = h.shape
    q = attn.q_proj(h[:, :1]).view(b, 1, -1, attn.head_dim).transpose(1, 2)  # (B, H, 1, Dh)
    k = attn.k_proj(h).view(b, length, -1, attn.head_dim).transpose(1, 2)  # (B, H, L, Dh)
    logits = (q @ k.transpose(-1, -2)) * attn.scale  # in the tower's dtype, as its eager attention does
    if attention_mask is not None:
        logits = logits + attention_mask[..., :1, :]
    return torch.softmax(logits, dim=-1, dtype=torch.float32).mean(dim=1)[:, 0]


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    root = getattr(tower, "vision_model", tower)
    layers = getattr(getattr(root, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"capture_cls_attention: {type(tower).__name__} has no encoder.layers; expected a CLIP-style vision tower"
        )
    return layers


def has_cls_token(tower: nn.Module) -> bool:
    root = getattr(tower, "vision_model", tower)
    return getattr(getattr(root, "embeddings", None), "class_embedding", None) is not None


class ClsAttentionCapture:
    """A pre-hook on one encoder layer; after each forward of the tower, :attr:`value` holds the [CLS] row
    (B, L) float32 of that forward (:meth:`pop` takes it). :meth:`remove` takes the hook off."""

    def __init__(self, layer: nn.Module):
        self.value: Optional[Tensor] = None
        self._handle = layer.register_forward_pre_hook(self._capture, with_kwargs=True)
        self._layer = layer

    def _capture(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        with torch.no_grad():
            self.value = cls_attention_row(module, hidden, mask)

    def pop(self) -> Tensor:
        if self.value is None:
            raise RuntimeError("ClsAttentionCapture.pop: the vision tower has not run since the last pop")
        value, self.value = self.value, None
        return value

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def capture_cls_attention(tower: nn.Module, layer: int) -> ClsAttentionCapture:
    """Hooks the ``layer``-th encoder layer of ``tower`` (Python indexing, so -2 is the penultimate layer:
    the same layer as ``output_attentions=True``'s ``attentions[layer]``, whose output is
    ``hidden_states[layer]`` for a negative ``layer``, as LLaVA's ``vision_feature_layer`` picks it).

    Raises ValueError for a tower without a [CLS] token, a layer that is not CLIP-style, or an index out of
    range. Use as a context manager or call ``remove()``.
    """
    if not has_cls_token(tower):
        raise ValueError(
            f"capture_cls_attention: {type(tower).__name__} has no [CLS] token (no embeddings.class_embedding), so "
            "there is no [CLS] attention to capture; pass scores computed another way"
        )
    layers = encoder_layers(tower)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(
            f"capture_cls_attention: layer must be an int in [-{len(layers)}, {len(layers)}), got {layer!r}"
        )
    chosen = layers[layer]
    attn = getattr(chosen, "self_attn", None)
    needed = ("q_proj", "k_proj", "head_dim", "scale")
    if not hasattr(chosen, "layer_norm1") or attn is None or not all(hasattr(attn, n) for n in needed):
        raise ValueError(
            f"capture_cls_attention: layer {layer} ({type(chosen).__name__}) is not a CLIP-style encoder layer "
            "(layer_norm1, self_attn.q_proj / k_proj / head_dim / scale)"
        )
    return ClsAttentionCapture(chosen)
