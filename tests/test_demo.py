"""`python -m restore_ext.demo` end to end on each random-weight family (the README's `make demo`, short): it runs,
its table has a prune-only row and a RESTORE row per base method (issue 17: DivPrune everywhere, VisPruner and HoloV
where the vision tower has a [CLS] token, a line saying why elsewhere), and for every base RESTORE's calibration
gives back the layer-0 attention share on visual tokens that pruning takes."""
import math
import re

import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from restore_ext import demo  # noqa: E402
from restore_ext.demo_models import random_model  # noqa: E402

CLS_BASES = {"llava": ["DivPrune", "VisPruner", "HoloV"], "qwen2_5_vl": ["DivPrune"], "qwen3_vl": ["DivPrune"]}


def table_rows(out):
    """{variant: (visual share %, KL text)} from the demo's table, in printed order."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^\s{4}(\S.*?)\s+(-?[\d.]+)%\s+(\S+)$", line)
        if m:
            rows[m.group(1)] = (float(m.group(2)), m.group(3))
    return rows


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_demo_reports_a_row_per_base_and_the_share_restored(family, tmp_path, capsys):
    demo.main(["--family", family, "--repeats", "1", "--max-new-tokens", "2", "--picture", str(tmp_path / "demo.png")])
    out = capsys.readouterr().out
    rows = table_rows(out)
    bases = CLS_BASES[family]
    want = ["full model"] + [f"{kind} ({b})" for b in bases for kind in ("prune only", "RESTORE")]
    assert list(rows) == want + ["merge, no calibration (DivPrune)"], out
    full = rows["full model"][0]
    assert rows["full model"][1] == "-"
    for name, (share, kl) in rows.items():
        assert 0.0 <= share <= 100.0, out
        if name != "full model":
            assert math.isfinite(float(kl)) and float(kl) >= -1e-6, out
    for b in bases:
        assert abs(rows[f"RESTORE ({b})"][0] - full) < abs(rows[f"prune only ({b})"][0] - full), out
    for b in sorted(set(CLS_BASES["llava"]) - set(bases)):  # Qwen: no [CLS] token, said so
        assert re.search(rf"^\s{{4}}{b}: not run \(.*\[CLS\]", out, re.M), out
    assert "visual tokens: 576 -> 64" in out
    if family == "llava":  # the picture of the reduction is drawn for LLaVA's square image grid
        assert (tmp_path / "demo.png").stat().st_size > 0


def test_llava_gets_prune_only_and_restore_per_base():
    model, _, _ = random_model("llava", "cpu", torch.float32)
    variants, skipped = demo.demo_variants(model)
    assert skipped == {}
    assert variants["full model"] is None
    for base, label in (("divprune", "DivPrune"), ("vispruner", "VisPruner"), ("holov", "HoloV")):
        assert variants[f"prune only ({label})"] == dict(base=base, keep_ratio=1.0, calibrate=False)
        assert variants[f"RESTORE ({label})"] == dict(base=base, calibrate=True)
    assert variants["merge, no calibration (DivPrune)"] == dict(calibrate=False)
    assert demo.MAIN in variants


def test_towers_without_cls_skip_the_cls_bases_and_say_why():
    model, _, _ = random_model("qwen2_5_vl", "cpu", torch.float32)
    variants, skipped = demo.demo_variants(model)
    assert set(skipped) == {"VisPruner", "HoloV"}
    assert all("[CLS]" in why and "Qwen2_5_VLForConditionalGeneration" in why for why in skipped.values())
    assert set(variants) == {"full model", "prune only (DivPrune)", "RESTORE (DivPrune)",
                             "merge, no calibration (DivPrune)"}
