"""The vLLM plugin's parts that need no vLLM: hf_overrides and its checks, the position-row flag encoding, and the
records kept beside the encoder cache. (The plugin itself runs in tests/vllm/, in vLLM's own environment.)"""
import json
import sys

import pytest
import torch

import restore_ext.integrations.vllm as rv
from restore_ext.integrations.vllm.encoder_records import EncoderRecords
from restore_ext.integrations.vllm.position_rows import FLAG_SHIFT, TABLE, decode_rows, encode_rows
from restore_ext.integrations.vllm.settings import RestoreSettings, settings_of


def test_importing_the_package_imports_no_vllm():
    assert "vllm" not in sys.modules


def test_hf_overrides_is_plain_json_and_round_trips():
    d = rv.hf_overrides(num_tokens=64, base="divprune", keep_ratio=0.5)
    assert json.loads(json.dumps(d)) == d
    assert d["restore"] == {"num_tokens": 64, "base": "divprune", "keep_ratio": 0.5, "rule": "reference",
                            "calibrate": True}
    assert len(d["mrope_section"]) == 3

    class Cfg:
        pass

    cfg = Cfg()
    cfg.restore = d["restore"]
    assert settings_of(cfg) == RestoreSettings(64, "divprune", 0.5, "reference")
    assert settings_of(Cfg()) is None
    cfg.restore = rv.hf_overrides(num_tokens=8, calibrate=False)["restore"]
    assert settings_of(cfg).calibrate is False


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_tokens=1), "num_tokens"),
    (dict(num_tokens=True), "num_tokens"),
    (dict(base="cls"), "base"),
    (dict(keep_ratio=1.0), "keep_ratio"),
    (dict(keep_ratio=0.0), "keep_ratio"),
    (dict(num_tokens=2, keep_ratio=0.9), "merged"),
    (dict(rule="nearest"), "rule"),
    (dict(calibrate="no"), "calibrate"),
    (dict(calibrate=1), "calibrate"),
])
def test_bad_settings_are_refused_with_the_argument_named(kwargs, words):
    with pytest.raises(ValueError, match=words):
        rv.hf_overrides(**kwargs)


def test_settings_from_config_reject_unknown_keys_and_non_objects():
    with pytest.raises(ValueError, match="unknown settings"):
        RestoreSettings.from_value({"num_tokens": 8, "ratio": 0.1})
    with pytest.raises(ValueError, match="JSON object"):
        RestoreSettings.from_value(8)


def test_position_rows_round_trip_and_runner_rows_carry_no_flag():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 1 << 39, (3, 50), generator=gen)
    flags = torch.randint(0, 2, (50,), generator=gen)
    enc = encode_rows(rows, flags)
    dec, got = decode_rows(enc)
    assert torch.equal(dec, rows) and torch.equal(got, flags)
    # what vLLM's runner writes for generated tokens: context_len + delta in every row, no flag
    runner = torch.arange(100, 110).expand(3, 10)
    assert torch.equal(decode_rows(runner)[1], torch.zeros(10, dtype=torch.long))
    assert TABLE == 1 and FLAG_SHIFT == 40


def test_position_rows_refuse_out_of_range_and_mixed_flags():
    with pytest.raises(ValueError, match="positions"):
        encode_rows(torch.tensor([[1 << 41]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="flags"):
        encode_rows(torch.tensor([[1]]), torch.tensor([-1]))
    mixed = torch.tensor([[1 << FLAG_SHIFT], [0], [0]])
    with pytest.raises(RuntimeError, match="different flags"):
        decode_rows(mixed)


def test_encoder_records_find_slices_and_forget_freed_outputs():
    rec = EncoderRecords()
    a, b = torch.randn(8, 4), torch.randn(6, 4)
    rec.add(a, torch.arange(8), torch.arange(8) * 10)
    rec.add(b, torch.arange(6) + 100, torch.arange(6) * 0)
    off, ten = rec.lookup(a[3:7])
    assert off.tolist() == [3, 4, 5, 6] and ten.tolist() == [30, 40, 50, 60]
    off, _ = rec.lookup_all([b[4:], a[:1]])
    assert off.tolist() == [104, 105, 0]
    with pytest.raises(RuntimeError, match="without the record"):
        rec.lookup(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="row range"):
        rec.lookup(a[:, 1:3])
    del a
    assert len(rec) == 1  # the finalizer dropped a's record with the tensor
    with pytest.raises(ValueError, match="contiguous"):
        rec.add(b[1:], torch.arange(5))
