"""The family-agnostic core of the transformers integration on synthetic inputs, with what a Qwen-style adapter
hands it: two modalities (image, video) in one prompt, multi-axis positions (B, L, 3), per-token extras reduced
with the same assignment (DeepStack-like), a left-padded row. Expectations are built token by token here."""
import math

import pytest
import torch

pytest.importorskip("transformers")

from restore_ext.integrations.transformers.adapter import VisualInput  # noqa: E402
from restore_ext.integrations.transformers.settings import RestoreSettings  # noqa: E402
from restore_ext.integrations.transformers.shortening import shorten_prompt  # noqa: E402
from restore_ext.integrations.transformers.visual_reduction import reduce_like, reduce_tokens  # noqa: E402


@pytest.mark.parametrize("keep_ratio", [0.5, 0.0, 1.0], ids=["restore", "merge-only", "prune-only"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduce_like_follows_the_assignment(keep_ratio, dtype):
    """Reducing the features themselves with reduce_like gives the reduction's own tokens: kept tokens unchanged,
    merged slots the mean of their members, pruned tokens gone. Extras of any trailing shape follow."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 8, generator=g, dtype=dtype)
    red = reduce_tokens(x, RestoreSettings(6, base="uniform", keep_ratio=keep_ratio))
    torch.testing.assert_close(reduce_like(x, red), red.tokens)
    torch.testing.assert_close(reduce_like(x.view(3, 20, 2, 4), red), red.tokens.view(3, 6, 2, 4))
    # merged slots by hand
    for b in range(3):
        for slot in range(6):
            members = (red.source[b] == slot).nonzero().squeeze(1)
            assert len(members) == int(red.size[b, slot])
            torch.testing.assert_close(reduce_like(x, red)[b, slot], x[b, members].float().mean(0).to(dtype))


def _run(num_tokens=4):
    """row 0: t t [image A: 12] t [video B: 10] t t; row 1: 9 padding, t [image C: 12] t t t t t."""
    g = torch.Generator().manual_seed(1)
    d, length = 8, 27
    embeds = torch.randn(2, length, d, generator=g)
    image_ph = torch.zeros(2, length, dtype=torch.bool)
    video_ph = torch.zeros(2, length, dtype=torch.bool)
    image_ph[0, 2:14] = True
    video_ph[0, 15:25] = True
    image_ph[1, 10:22] = True
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, :9] = False
    positions = torch.randint(0, 1000, (2, length, 3), generator=g)
    a, c, b = (torch.randn(n, d, generator=g) for n in (12, 12, 10))
    ax, cx, bx = (torch.randn(n, 2, 3, generator=g) for n in (12, 12, 10))
    visual = [
        VisualInput("image", [a, c], image_ph, {"deep": [ax, cx]}),
        VisualInput("video", [b], video_ph, {"deep": [bx]}),
    ]
    settings = RestoreSettings(num_tokens, base="uniform")
    next_pos = torch.tensor([50, 60])
    short = shorten_prompt(embeds, valid, positions, visual, settings, next_pos)
    items = {"a": (a, ax, 0, 2, 0), "b": (b, bx, 0, 15, 1), "c": (c, cx, 1, 10, 0)}  # feats, extra, row, col, modality
    return short, embeds, positions, valid, settings, items


def _expected_row(row, layout, embeds, positions, settings, items):
    """[(embedding, position (3,), log size, layer-0 log size, modality, extra)] of a row's valid tokens in order."""
    out = []
    for part in layout:
        if isinstance(part, int):  # a text column
            out.append((embeds[row, part], positions[row, part], 0.0, 0.0, -1, torch.zeros(2, 3)))
            continue
        feats, extra, r, col, modality = items[part]
        red = reduce_tokens(feats[None], settings)
        ext = reduce_like(extra[None], red)[0]
        n, k = feats.shape[0], red.position.shape[1]
        for j in range(k):
            p = int(red.position[0, j])
            out.append((red.tokens[0, j], positions[r, col + p], math.log(int(red.size[0, j])), math.log(n / k),
                        modality, ext[j]))
    return out


def test_two_modalities_multi_axis_positions_and_extras():
    short, embeds, positions, valid, settings, items = _run()
    rows = [
        _expected_row(0, [0, 1, "a", 14, "b", 25, 26], embeds, positions, settings, items),
        _expected_row(1, [9, "c", 22, 23, 24, 25, 26], embeds, positions, settings, items),
    ]
    width = max(len(r) for r in rows)
    assert short.inputs_embeds.shape == (2, width, 8) and width == 2 + 4 + 1 + 4 + 2  # padding-only columns gone
    keys = short.keys
    assert keys.pos.shape == (2, width, 3) and short.extras["deep"].shape == (2, width, 2, 3)
    for r, expected in enumerate(rows):
        pad = width - len(expected)
        assert not short.valid[r, :pad].any() and short.valid[r, pad:].all()
        assert torch.isinf(keys.log_size[r, :pad]).all() and (keys.pos[r, :pad] == 0).all()
        for j, (emb, pos, ls, ls0, modality, extra) in enumerate(expected):
            c = pad + j
            torch.testing.assert_close(short.inputs_embeds[r, c], emb)
            assert torch.equal(keys.pos[r, c], pos)
            assert math.isclose(float(keys.log_size[r, c]), ls, rel_tol=1e-6, abs_tol=1e-7)
            assert math.isclose(float(keys.log_size_first[r, c]), ls0, rel_tol=1e-6, abs_tol=1e-7)
            assert int(short.modality[r, c]) == modality and bool(keys.visual[r, c]) == (modality >= 0)
            torch.testing.assert_close(short.extras["deep"][r, c], extra)
    assert torch.equal(keys.next_pos, torch.tensor([50, 60])) and keys.reduced_rows.all() and short.has_visual


def test_text_only_forward_is_the_same_path_unchanged():
    """No visual input and no padding: the prompt passes through as it is (the decode-step case)."""
    embeds = torch.randn(2, 5, 8)
    positions = torch.arange(5).expand(2, 5) + 7
    short = shorten_prompt(
        embeds, torch.ones(2, 5, dtype=torch.bool), positions, [], RestoreSettings(4), torch.tensor([12, 12])
    )
    assert torch.equal(short.inputs_embeds, embeds) and torch.equal(short.keys.pos, positions)
    assert (short.keys.log_size == 0).all() and not short.keys.visual.any() and not short.has_visual
    assert not short.keys.reduced_rows.any() and (short.modality == -1).all()


def test_placeholder_runs_must_be_whole_items():
    embeds = torch.randn(1, 10, 4)
    ph = torch.zeros(1, 10, dtype=torch.bool)
    ph[0, [1, 2, 3, 5, 6, 7]] = True  # two runs of 3, but one item of 6 features
    args = (embeds, torch.ones(1, 10, dtype=torch.bool), torch.arange(10)[None], [])
    with pytest.raises(ValueError, match="image's placeholder tokens must be contiguous"):
        shorten_prompt(*args[:3], [VisualInput("image", [torch.randn(6, 4)], ph)], RestoreSettings(2),
                       torch.tensor([10]))
    with pytest.raises(ValueError, match="6 video placeholder tokens but the videos give 5"):
        shorten_prompt(*args[:3], [VisualInput("video", [torch.randn(5, 4)], ph)], RestoreSettings(2),
                       torch.tensor([10]))
