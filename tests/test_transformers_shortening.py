"""The family-agnostic core of the transformers integration on synthetic inputs, with what a Qwen-style adapter
hands it: two modalities (image, video) in one prompt, multi-axis positions (B, L, 3), per-token extras reduced
with the same assignment (DeepStack-like), a left-padded row. Expectations are built token by token here."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) != 5:
    pytest.skip(f"the integration targets transformers 5.x, found {transformers.__version__}", allow_module_level=True)

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
    """row 0: t t [image A: 12] t [video B: 5] t [video B: 5 more] t t (a video split by a timestamp token, as
    Qwen3-VL's frames are); row 1: 10 padding, t [image C: 12] t t t t t."""
    g = torch.Generator().manual_seed(1)
    d, length = 8, 28
    embeds = torch.randn(2, length, d, generator=g)
    image_ph = torch.zeros(2, length, dtype=torch.bool)
    video_ph = torch.zeros(2, length, dtype=torch.bool)
    image_ph[0, 2:14] = True
    video_ph[0, 15:20] = True
    video_ph[0, 21:26] = True
    image_ph[1, 11:23] = True
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, :10] = False
    positions = torch.randint(0, 1000, (2, length, 3), generator=g)
    a, c, b = (torch.randn(n, d, generator=g) for n in (12, 12, 10))
    ax, cx, bx = (torch.randn(n, 2, 3, generator=g) for n in (12, 12, 10))
    visual = [
        VisualInput("image", [a, c], image_ph, {"deep": [ax, cx]}),
        VisualInput("video", [b], video_ph, {"deep": [bx]}),
    ]
    settings = RestoreSettings(num_tokens, base="uniform")
    short = shorten_prompt(embeds, valid, positions, visual, settings, torch.tensor([50, 60]))
    items = [  # features, extras, row, placeholder columns, modality
        (a, ax, 0, torch.arange(2, 14), 0),
        (b, bx, 0, torch.cat([torch.arange(15, 20), torch.arange(21, 26)]), 1),
        (c, cx, 1, torch.arange(11, 23), 0),
    ]
    text = ~(image_ph | video_ph) & valid
    return short, embeds, positions, text, settings, items


def _expected_rows(embeds, positions, text, settings, items):
    """Per row, [(embedding, position (3,), log size, layer-0 log size, modality, extra)] of its valid tokens in
    column order: text tokens as they are, each item's outputs on their representatives' columns."""
    rows = [[] for _ in range(embeds.shape[0])]
    for r in range(embeds.shape[0]):
        for col in text[r].nonzero().squeeze(1).tolist():
            rows[r].append((col, (embeds[r, col], positions[r, col], 0.0, 0.0, -1, torch.zeros(2, 3))))
    for feats, extra, r, cols, modality in items:
        red = reduce_tokens(feats[None], settings)
        ext = reduce_like(extra[None], red)[0]
        n, k = feats.shape[0], red.position.shape[1]
        for j in range(k):
            col = int(cols[int(red.position[0, j])])
            rows[r].append((col, (red.tokens[0, j], positions[r, col], math.log(int(red.size[0, j])),
                                  math.log(n / k), modality, ext[j])))
    return [[entry for _, entry in sorted(row, key=lambda e: e[0])] for row in rows]


def test_two_modalities_multi_axis_positions_and_extras():
    short, embeds, positions, text, settings, items = _run()
    rows = _expected_rows(embeds, positions, text, settings, items)
    width = max(len(r) for r in rows)
    assert short.inputs_embeds.shape == (2, width, 8) and width == 6 + 4 + 4  # padding-only columns gone
    assert len(rows[1]) == 1 + 4 + 5 and (short.tokens_before, short.tokens_after) == (34, 12)
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
    # the split video really has outputs on both sides of its timestamp token
    video_cols = [int(items[1][3][int(p)]) for p in reduce_tokens(items[1][0][None], settings).position[0]]
    assert min(video_cols) < 20 < max(video_cols)


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


def test_placeholders_must_match_the_items():
    embeds = torch.randn(2, 10, 4)
    ph = torch.zeros(2, 10, dtype=torch.bool)
    ph[0, 7:10] = True
    ph[1, 0:3] = True  # one item of 6 features over two rows
    args = (embeds, torch.ones(2, 10, dtype=torch.bool), torch.arange(10).expand(2, 10))
    nxt = torch.tensor([10, 10])
    with pytest.raises(ValueError, match="placeholder tokens of image 0 span several prompts"):
        shorten_prompt(*args, [VisualInput("image", [torch.randn(6, 4)], ph)], RestoreSettings(2), nxt)
    with pytest.raises(ValueError, match="6 video placeholder tokens but the videos give 5"):
        shorten_prompt(*args, [VisualInput("video", [torch.randn(5, 4)], ph)], RestoreSettings(2), nxt)
