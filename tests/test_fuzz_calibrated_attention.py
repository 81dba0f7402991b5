"""Property-based tests of calibrated_attention (docs/ops.md §5) against the float64 reference, held to
FlashAttention's tolerance rule (conftest.fa_tolerance_check): shapes from 0 to 1100 keys, every dtype, GQA
ratios 1-8, head dims 1-256, strided / sliced / stride-0 q, k, v, positions with gaps, repeats, disorder, huge
offsets and int32 ends, tables shorter and longer than the distances, -inf masks down to whole rows, custom
scales; the documented errors for every malformed argument. Budget: conftest.py."""
import math
import re
from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import restore_ext
from restore_ext import reference as ref
from conftest import DEVICES, eager_same_precision, fa_tolerance_check, fuzz_settings
from fuzz_attention_inputs import attention_cases
from fuzz_strategies import generator, seeds

F32_STRIDE0_L = "stride0_L"  # float32 K / V with stride 0 along L: issue 14 item 1, drawn by its own test below


def no_float32_stride0_kv(case):
    return case.dtype != torch.float32 or F32_STRIDE0_L not in case.layouts[1:]


def check_against_reference(case, device):
    args = case.build()
    q = args[0]
    out = restore_ext.calibrated_attention(*(a.to(device) if a is not None else None for a in args),
                                           causal=case.causal, scale=case.scale)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous() and out.device.type == device
    out = out.cpu()
    assert not out.isnan().any(), "NaN output from finite inputs"
    if not (case.b and case.lq and case.lk):  # docs/ops.md "Empty inputs": Lk = 0 gives zeros
        assert (out == 0).all()
        return
    expected = ref.calibrated_attention(*args, causal=case.causal, scale=case.scale)
    eager = eager_same_precision(*args, causal=case.causal, scale=case.scale)
    floor = (1e-5 if q.dtype == torch.float32 else 1e-4) * max(1.0, case.magnitude)
    fa_tolerance_check(out, expected, eager, floor=floor)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings()
@given(case=attention_cases().filter(no_float32_stride0_kv))
def test_matches_reference(device, case):
    check_against_reference(case, device)


@pytest.mark.parametrize("device", DEVICES)
@settings(fuzz_settings(0.5, shrink=False),
          suppress_health_check=[*settings.default.suppress_health_check, HealthCheck.function_scoped_fixture])
@given(case=attention_cases(dtype=st.just(torch.float32), lk_max=300), which=st.sampled_from(["k", "v", "kv"]))
def test_float32_kv_with_stride0_along_L(device, case, which, capfd):
    """Item 1: BLAS rejected the leading dimension 0 (oneMKL printed an error, no exception, output off by up
    to 3)."""
    layouts = list(case.layouts)
    for i, name in ((1, "k"), (2, "v")):
        if name in which:
            layouts[i] = F32_STRIDE0_L
    check_against_reference(replace(case, layouts=tuple(layouts), lk=max(case.lk, 2)), device)
    printed = capfd.readouterr()
    assert "incorrect on entry" not in printed.out + printed.err, "BLAS refused an argument"


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5, shrink=False)
@given(case=attention_cases(positions_from=st.just("int64_ends"), lk_max=64, lq_max=64))
def test_positions_at_the_ends_of_int64(device, case):
    """Item 5: q_pos near INT64_MAX minus a negative k_pos wrapped and read table[0] instead of table[T - 1]
    (the reference saturates: restore_ext.attention_bias.distance_bias)."""
    check_against_reference(replace(case, b=max(case.b, 1), lq=max(case.lq, 1), lk=max(case.lk, 1)), device)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5, shrink=False)
@given(case=attention_cases(lk_max=64, lq_max=64), bad=st.sampled_from([math.inf, math.nan]), seed=seeds)
def test_log_size_plus_inf_or_nan_is_refused(device, case, bad, seed):
    """Item 5: +inf or NaN in log_size gave NaN outputs without an error; only -inf (a masked key) is meaningful."""
    case = replace(case, b=max(case.b, 1), lk=max(case.lk, 1), log_size=case.log_size or "none")
    q, k, v, log_size, q_pos, k_pos, table = case.build()
    gen = generator(seed)
    where = (int(torch.randint(0, case.b, (1,), generator=gen)), int(torch.randint(0, case.lk, (1,), generator=gen)))
    log_size = log_size.clone()
    log_size[where] = bad
    with pytest.raises(RuntimeError, match=r"calibrated_attention: log_size must hold finite values or -inf"):
        restore_ext.calibrated_attention(*(t.to(device) if t is not None else None
                                           for t in (q, k, v, log_size, q_pos, k_pos, table)),
                                         causal=case.causal, scale=case.scale)


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5)
@given(case=attention_cases(lk_max=64, lq_max=64), bad=st.sampled_from([math.inf, math.nan]))
def test_table_plus_inf_or_nan_is_refused(device, case, bad):
    """Found by fuzzing: a table holding +inf or NaN gave NaN outputs without an error; refused like log_size
    (-inf stays meaningful: it masks the keys at that distance)."""
    case = replace(case, b=max(case.b, 1), lq=max(case.lq, 1), lk=max(case.lk, 1), positions=case.positions or "arange")
    q, k, v, log_size, q_pos, k_pos, table = case.build()
    table = torch.full_like(table, bad)  # every distance reads it
    with pytest.raises(RuntimeError, match=r"calibrated_attention: table .*finite"):
        restore_ext.calibrated_attention(*(t.to(device) if t is not None else None
                                           for t in (q, k, v, log_size, q_pos, k_pos, table)),
                                         causal=case.causal, scale=case.scale)


# Each mutation breaks one rule of docs/ops.md §5; the error must name the op and the argument.
MUTATIONS = {
    "q_not_4d": (lambda a: {"q": a["q"][0]}, "q must be 4-D"),
    "k_other_dtype": (lambda a: {"k": a["k"].to(other_dtype(a["k"].dtype))}, "q, k and v must have one dtype"),
    "all_float64": (lambda a: {n: a[n].double() for n in "qkv"}, "q must be float16, bfloat16 or float32"),
    "heads_do_not_divide": (lambda a: {n: torch.randn(*a[n].shape[:2], a["q"].shape[2] + 1, a[n].shape[3]).to(a[n])
                                       for n in "kv"}, "does not divide"),
    "head_dim_differs": (lambda a: {n: torch.cat([a[n], a[n][..., :1]], -1) for n in "kv"}, "k has head dim"),
    "v_shorter": (lambda a: {"v": a["v"][:, :-1]}, "v must have k's shape"),
    "batch_differs": (lambda a: {"q": torch.cat([a["q"], a["q"]])}, "has batch"),
    "last_dim_strided": (lambda a: {"k": torch.cat([a["k"], a["k"]], -1)[..., ::2]}, "k must have a contiguous last"),
    "log_size_short": (lambda a: {"log_size": torch.zeros(a["k"].shape[0], a["k"].shape[1] + 1)}, "log_size must have shape"),
    "log_size_float16": (lambda a: {"log_size": torch.zeros(a["k"].shape[:2], dtype=torch.float16)}, "log_size must be float32"),
    "positions_without_table": (lambda a: {"table": None}, "come together or not at all"),
    "table_without_positions": (lambda a: {"q_pos": None, "k_pos": None}, "come together or not at all"),
    "q_pos_float": (lambda a: {"q_pos": a["q_pos"].float()}, "q_pos must be int32 or int64"),
    "k_pos_short": (lambda a: {"k_pos": a["k_pos"][:, 1:]}, "k_pos must have shape"),
    "table_2d": (lambda a: {"table": a["table"][None]}, "table must be 1-D with at least one entry"),
    "table_empty": (lambda a: {"table": a["table"][:0]}, "table must be 1-D with at least one entry"),
    "table_float64": (lambda a: {"table": a["table"].double()}, "table must be float32"),
    "scale_not_finite": (lambda a: {"scale": math.nan}, "scale must be finite"),
}


def other_dtype(dtype):
    return torch.float16 if dtype != torch.float16 else torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
@fuzz_settings(0.5)
@given(case=attention_cases(lq_max=20, lk_max=20), mutation=st.sampled_from(sorted(MUTATIONS)))
def test_malformed_arguments_are_refused(device, case, mutation):
    case = replace(case, b=max(case.b, 1), lq=max(case.lq, 1), lk=max(case.lk, 2), dh=max(case.dh, 2),
                   positions=case.positions or "arange", layouts=("contiguous",) * 3)
    names = ("q", "k", "v", "log_size", "q_pos", "k_pos", "table")
    args = dict(zip(names, case.build()), scale=case.scale)
    change, words = MUTATIONS[mutation]
    args.update(change(args))
    args = {n: a.to(device) if isinstance(a, torch.Tensor) else a for n, a in args.items()}
    with pytest.raises(RuntimeError, match=r"calibrated_attention: .*" + re.escape(words)):
        restore_ext.calibrated_attention(**args, causal=case.causal)

