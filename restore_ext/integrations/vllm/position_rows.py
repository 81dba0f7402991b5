"""The one place where RESTORE puts per-token flags into vLLM's M-RoPE position rows, and takes them out.

Why rows at all: a per-token fact that is known when a request is added and must survive chunked prefill,
prefix caching and preemption (which recomputes a request from its prompt) has exactly one carrier in vLLM:
the position rows that ``get_mrope_input_positions`` returns for the prompt. The runner copies them for prompt
tokens and writes ``context_len + delta`` into every row for generated tokens, so a flag set on the prompt rows
can never leak onto a generated token, even when a recomputed chunk holds both.

The flag needed is whether a query gets RESTORE's RoPE distance table: the prompt tokens of a request that holds
a reduced image get it, decode steps do not (as in the authors' code and ``apply_restore``). Flags sit above
bit FLAG_SHIFT of every row; the model's forward decodes the rows before any layer sees a position.
"""
from __future__ import annotations

import torch
from torch import Tensor

FLAG_SHIFT = 40  # positions stay below 2**40 (about 10**12 tokens)
POSITION_MASK = (1 << FLAG_SHIFT) - 1
TABLE = 1  # bit 0: this query adds the distance table


def encode_rows(rows: Tensor, flags: Tensor) -> Tensor:
    """rows (R, L) int64 positions in [0, 2**40), flags (L,) int64 >= 0 -> (R, L) rows carrying the flags."""
    if rows.dtype != torch.int64 or rows.dim() != 2 or flags.shape != rows.shape[1:]:
        raise ValueError(
            f"encode_rows: rows must be (R, L) int64 and flags (L,), got rows {tuple(rows.shape)} {rows.dtype}, "
            f"flags {tuple(flags.shape)}"
        )
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) > POSITION_MASK):
        raise ValueError(f"encode_rows: positions must lie in [0, 2**{FLAG_SHIFT}), got [{int(rows.min())}, "
                         f"{int(rows.max())}]")
    if flags.numel() and int(flags.min()) < 0:
        raise ValueError("encode_rows: flags must be >= 0")
    return rows + (flags.to(torch.int64) << FLAG_SHIFT)[None, :]


def decode_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """(R, L) rows from the runner -> ((R, L) positions, (L,) flags). Every row of a token carries the same
    flags (the runner never mixes them); anything else means the rows did not come from :func:`encode_rows`."""
    flags = rows >> FLAG_SHIFT
    if rows.shape[0] > 1 and not bool((flags == flags[:1]).all()):
        raise RuntimeError(
            "restore_ext.integrations.vllm: the position rows carry different flags per row; they were not made "
            "by this model's get_mrope_input_positions (another component rewrote them)"
        )
    return rows & POSITION_MASK, flags[0]
