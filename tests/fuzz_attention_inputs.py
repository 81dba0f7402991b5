"""Random calibrated_attention inputs for tests/test_fuzz_calibrated_attention.py (not a test module): a
printable recipe (AttentionCase) that hypothesis draws and the test builds into tensors."""
import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from fuzz_strategies import INT64_MAX, INT64_MIN, batches, dtypes, generator, lengths, seeds, with_layout

# How a (B, L, heads, Dh) tensor is laid out; each keeps the last dim contiguous, as docs/ops.md §5 requires.
QKV_LAYOUTS = ["contiguous", "bhld", "sliced_L", "sliced_heads", "offset", "stride0_L", "stride0_B", "stride0_heads"]
POSITIONS = ["arange", "gaps_and_repeats", "unordered", "large", "int32_ends"]
MASKS = ["none", "scattered", "prefix", "one_row", "all"]
ELEMENTS_CAP = 1_500_000  # B * H * Lq * Lk: the float64 reference forms that matrix


@dataclass(frozen=True)
class AttentionCase:
    b: int
    lq: int
    lk: int
    h: int
    hkv: int
    dh: int
    dtype: torch.dtype
    causal: bool = True
    layouts: tuple = ("contiguous", "contiguous", "contiguous")  # q, k, v
    log_size: Optional[str] = None  # a MASKS entry, or None for no log_size
    positions: Optional[str] = None  # a POSITIONS entry (or "int64_ends"), or None for no q_pos / k_pos / table
    pos_dtype: torch.dtype = torch.int64
    table_len: int = 1
    table_kind: str = "rope"  # rope, random, minus_inf
    scale: Optional[float] = None
    magnitude: float = 1.0
    seed: int = 0

    def build(self):
        """(q, k, v, log_size, q_pos, k_pos, table) as docs/ops.md §5 takes them."""
        b, lq, lk, gen = self.b, self.lq, self.lk, generator(self.seed)
        qkv = []
        for length, heads, layout in zip((lq, lk, lk), (self.h, self.hkv, self.hkv), self.layouts):
            t = (torch.randn(b, length, heads, self.dh, generator=gen) * self.magnitude).to(self.dtype)
            qkv.append(laid_out(t, layout))
        log_size = None
        if self.log_size is not None:
            log_size = torch.log(torch.randint(1, 9, (b, lk), generator=gen).float())
            log_size = masked(log_size, self.log_size, gen)
        q_pos = k_pos = table = None
        if self.positions is not None:
            q_pos, k_pos = positions(self.positions, b, lq, lk, gen)
            q_pos, k_pos = q_pos.to(self.pos_dtype), k_pos.to(self.pos_dtype)
            table = make_table(self.table_kind, self.table_len, gen)
        return (*qkv, log_size, q_pos, k_pos, table)


def laid_out(t, layout):
    if layout == "bhld":  # a (B, H, L, Dh) tensor seen as (B, L, H, Dh)
        return with_layout(t, "transposed", (1, 2))
    if layout.startswith("sliced_"):
        return with_layout(t, "sliced", (0, 1) if layout == "sliced_L" else (1, 2))
    if layout.startswith("stride0_"):
        dim = {"B": 0, "L": 1, "heads": 2}[layout[len("stride0_"):]]
        return t.narrow(dim, 0, 1).expand(t.shape) if t.shape[dim] else t
    return with_layout(t, layout)


def masked(log_size, kind, gen):
    """-inf masks keys (docs/ops.md §5): scattered padding, a leading run, a whole batch row, everything."""
    minus_inf = torch.full_like(log_size, -math.inf)
    b, lk = log_size.shape
    if kind == "scattered":
        return torch.where(torch.rand(b, lk, generator=gen) < 0.3, minus_inf, log_size)
    if kind == "prefix":
        return torch.where(torch.arange(lk) < (lk + 1) // 2, minus_inf, log_size)
    if kind == "one_row":
        return torch.where(torch.arange(b)[:, None] == 0, minus_inf, log_size)
    if kind == "all":
        return minus_inf
    return log_size


def positions(kind, b, lq, lk, gen):
    """(q_pos, k_pos) int64: RESTORE's increasing positions with gaps and repeats, unordered ones (keys after
    their query), huge offsets (distances beyond any table), the ends of int32, or the ends of int64."""
    if kind == "arange":
        k_pos = torch.arange(lk).expand(b, lk)
        return torch.arange(lk - lq, lk).expand(b, lq), k_pos
    if kind == "gaps_and_repeats":
        k_pos = torch.randint(0, 3 * lk + 1, (b, lk), generator=gen).sort(dim=1).values
        last = k_pos[:, -1:] if lk else torch.zeros(b, 1, dtype=torch.long)
        return last - lq + 1 + torch.arange(lq) * 2, k_pos
    if kind == "unordered":
        return torch.randint(-40, 40, (b, lq), generator=gen), torch.randint(-40, 40, (b, lk), generator=gen)
    if kind == "large":  # offsets of 2^50, distances up to 2^51: far beyond the table, never near int64's ends
        shift = torch.randint(-2, 3, (b, 1), generator=gen) * 2**50
        q_pos = torch.randint(-(2**50), 2**50, (b, lq), generator=gen)
        return q_pos + shift, torch.randint(-5, 5, (b, lk), generator=gen) + shift
    ends = (INT64_MIN, INT64_MAX) if kind == "int64_ends" else (-(2**31), 2**31 - 1)
    corners = torch.tensor([ends[0], ends[0] + 1, -1, 0, 1, ends[1] - 1, ends[1]])
    pick = lambda n: corners[torch.randint(0, len(corners), (b, n), generator=gen)]  # noqa: E731
    return pick(lq), pick(lk)


def make_table(kind, t, gen):
    if kind == "rope":
        rotary_dim = 2 * int(torch.randint(1, 65, (1,), generator=gen))
        return ref.distance_bias_table(t, restore_ext.default_inv_freq(rotary_dim))
    table = torch.randn(t, generator=gen) * 2
    if kind == "minus_inf":  # a -inf entry masks every key at that distance (docs/ops.md §5's logit)
        table = torch.where(torch.rand(t, generator=gen) < 0.3, -math.inf, table)
    return table


@st.composite
def attention_cases(draw, dtype=dtypes, layouts=st.sampled_from(QKV_LAYOUTS), positions_from=st.sampled_from(POSITIONS),
                    lq_max=300, lk_max=1100):
    b = draw(batches)
    lq, lk = draw(lengths(lq_max, min_len=0)), draw(lengths(lk_max, min_len=0))
    hkv, ratio = draw(st.sampled_from([1, 2, 3])), draw(st.sampled_from([1, 2, 3, 4, 8]))
    h = hkv * ratio
    dh = draw(st.sampled_from([1, 3, 8, 16, 24, 32, 64, 80, 96, 128, 256]))
    lq = min(lq, max(1, ELEMENTS_CAP // max(1, b * h * lk))) if lq else 0
    dtype = draw(dtype)
    q_layout, k_layout, v_layout = draw(layouts), draw(layouts), draw(layouts)
    has_positions = draw(st.booleans())
    case = AttentionCase(
        b=b, lq=lq, lk=lk, h=h, hkv=hkv, dh=dh, dtype=dtype, causal=draw(st.booleans()),
        layouts=(q_layout, k_layout, v_layout),
        log_size=draw(st.none() | st.sampled_from(MASKS)),
        positions=draw(positions_from) if has_positions else None,
        pos_dtype=draw(st.sampled_from([torch.int32, torch.int64])),
        table_len=draw(st.sampled_from([1, 2, 7, max(1, lk), 3 * lk + 5, 4099])),
        table_kind=draw(st.sampled_from(["rope", "random", "minus_inf"])),
        scale=draw(st.none() | st.sampled_from([0.0, -0.5, 0.05, 0.3, 1.0, 3.0])),
        magnitude=draw(st.sampled_from([1.0, 1.0, 0.0, 1e-3, 4.0])),
        seed=draw(seeds),
    )
    if case.positions in ("int32_ends", "int64_ends"):  # int32 cannot hold int64's ends
        case = replace(case, pos_dtype=torch.int32 if case.positions == "int32_ends" else torch.int64)
    return case
