"""Per-token facts of reduced encoder outputs, kept beside vLLM's encoder cache rather than inside the embeddings.

vLLM caches each tensor that ``embed_multimodal`` returns (one per image) and, in every step that schedules some
of an image's placeholder tokens, passes ``embed_input_ids`` a row slice of it: a view of the same storage. So a
record keyed by the output's storage finds, for any slice, which rows it holds, with no extra embedding channels.
A record lives exactly as long as its output tensor (a weakref finalizer drops it), so a freed storage address
that a later tensor reuses can never match a stale record.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

_WHO = "restore_ext.integrations.vllm"


@dataclass
class _Record:
    output: "weakref.ref[Tensor]"
    facts: tuple[Tensor, ...]  # each (K, ...) row-aligned with the output


class EncoderRecords:
    def __init__(self):
        self._records: dict[int, _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(self, output: Tensor, *facts: Tensor) -> None:
        """output (K, D), which must own its storage from row 0; facts: tensors with K rows."""
        if output.dim() != 2 or output.storage_offset() != 0 or not output.is_contiguous():
            raise ValueError(f"{_WHO}: a recorded encoder output must be a contiguous (K, D) tensor at the start of "
                             f"its own storage")
        if any(f.shape[0] != output.shape[0] for f in facts):
            raise ValueError(f"{_WHO}: facts must have one row per output row ({output.shape[0]})")
        key = output.untyped_storage().data_ptr()
        self._records[key] = _Record(weakref.ref(output), facts)
        weakref.finalize(output, self._records.pop, key, None)

    def lookup(self, piece: Tensor) -> tuple[Tensor, ...]:
        """The facts of the rows that ``piece`` (a row slice of a recorded output) holds."""
        rec = self._records.get(piece.untyped_storage().data_ptr())
        base = rec.output() if rec is not None else None
        if base is None:
            raise RuntimeError(
                f"{_WHO}: an image embedding of {tuple(piece.shape)} reached embed_input_ids without the record of "
                "its reduction; RESTORE needs the encoder outputs its own embed_multimodal produced in this process"
            )
        row_bytes = base.stride(0) * base.element_size()
        start, rem = divmod(piece.data_ptr() - base.data_ptr(), row_bytes)
        stop = start + piece.shape[0]
        if rem or piece.dim() != 2 or piece.stride() != base.stride() or not 0 <= start <= stop <= base.shape[0]:
            raise RuntimeError(f"{_WHO}: an image embedding slice is not a row range of its encoder output")
        return tuple(f[start:stop] for f in rec.facts)

    def lookup_all(self, pieces) -> tuple[Tensor, ...]:
        """Facts of several slices, concatenated in order (the order vLLM scatters them into the step)."""
        parts = [self.lookup(p) for p in pieces]
        return tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
