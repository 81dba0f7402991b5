"""`python -m restore_ext.demo` end to end on each random-weight family (the README's `make demo`, short): it
runs, and RESTORE's calibration gives back the layer-0 attention share on visual tokens that pruning takes."""
import re

import pytest

pytest.importorskip("transformers")
from restore_ext import demo  # noqa: E402


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl", "qwen3_vl"])
def test_demo_reports_the_share_restored(family, tmp_path, capsys):
    demo.main(["--family", family, "--repeats", "1", "--max-new-tokens", "2", "--picture", str(tmp_path / "demo.png")])
    out = capsys.readouterr().out
    share = {name: float(value) for name, value in re.findall(r"^\s{4}(full model|prune only|RESTORE)\s+([\d.]+) %",
                                                               out, re.M)}
    assert set(share) == {"full model", "prune only", "RESTORE"}, out
    assert abs(share["RESTORE"] - share["full model"]) < abs(share["prune only"] - share["full model"]), out
    if family == "llava":  # the picture of the reduction is drawn for LLaVA's square image grid
        assert (tmp_path / "demo.png").stat().st_size > 0
