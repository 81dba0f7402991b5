"""The tiny offline Qwen models and hand-built inputs of tests/qwen_models.py are what the processor would give:
the unpatched models accept them, and the model's own get_rope_index places each image / video on its grid."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from qwen_models import (  # noqa: E402
    FAMILIES, IMAGE, VIDEO, make_inputs, qwen_api, rope_positions, split_rows, tiny_model,
)

NEEDS_QWEN_API = pytest.mark.skipif(not qwen_api(), reason=(
    f"transformers {transformers.__version__}: Qwen's get_rope_index does not take mm_token_type_ids, which these "
    "inputs and the integration use"))


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def grid_positions(start, t, h, w, t_stride=1):
    tt, hh, ww = torch.meshgrid(torch.arange(t) * t_stride, torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt + start, hh + start, ww + start]).reshape(3, -1)


@NEEDS_QWEN_API
def test_image_and_video_land_on_their_grids(family_model):
    family, model = family_model
    inputs = make_inputs(family, [[5, 6, 7], ("image", (4, 6)), [8], ("video", (3, 4, 4)), [9, 10]])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], 128) and torch.isfinite(logits).all()
    pos = rope_positions(model, inputs)[:, 0]
    ids = inputs["input_ids"][0]
    img = (ids == IMAGE).nonzero()[:, 0]
    assert img.numel() == 6 and torch.equal(pos[:, img], grid_positions(4, 1, 2, 3))  # 3 text + vision start
    vid = (ids == VIDEO).nonzero()[:, 0]
    assert vid.numel() == 12
    if family == "qwen2_5_vl":  # one block; t advances by tokens_per_second * seconds per grid = 2
        start = int(pos[0, vid[0]])
        assert torch.equal(pos[:, vid], grid_positions(start, 3, 2, 2, t_stride=2))
    else:  # a timestamp and start / end tokens around each frame; each frame a (1, h, w) grid of its own
        frames = vid.view(3, 4)
        assert bool((frames[1:, 0] - frames[:-1, -1] == 4).all())  # end, timestamp, start between frames
        for f in range(3):
            start = int(pos[0, frames[f, 0]])
            assert torch.equal(pos[:, frames[f]], grid_positions(start, 1, 2, 2))
    after = pos[:, -2:]
    assert torch.equal(after[0], after[1]) and torch.equal(after[0], after[2])  # text: one id on all axes


@NEEDS_QWEN_API
def test_left_padded_batch_rows_equal_rows_alone(family_model):
    family, model = family_model
    rows = [[[1, 2], ("image", (2, 4)), [3]], [[4], ("image", (4, 4)), [5], ("image", (2, 2)), [6, 7]]]
    batch = make_inputs(family, *rows)
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        full = model(**batch).logits
        for i, single in enumerate(split_rows(family, rows)):
            alone = model(**single).logits
            torch.testing.assert_close(full[i, -alone.shape[1]:], alone[0], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(qwen_api(), reason="this transformers has the Qwen API the integration needs")
def test_transformers_without_the_qwen_api_is_refused(family_model):
    from restore_ext.integrations.transformers import apply_restore

    with pytest.raises(ValueError, match="needs a transformers whose get_rope_index takes mm_token_type_ids"):
        apply_restore(family_model[1], num_tokens=4)
