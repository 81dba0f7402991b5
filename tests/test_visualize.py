"""restore_ext.visualize: the pixels drawn for kept, merged (one colour per cluster) and dropped patches, the size
labels, and the picture written by the demo's helper."""
import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import restore_ext  # noqa: E402
from restore_ext import Reduced, visualize  # noqa: E402

GREY = 0.5


def grey_image(side=112):
    return np.full((side, side, 3), GREY)


def hand_made():
    """8 patches in a 2 x 4 grid -> 4 outputs: patch 1 kept, {0, 2, 3} merged (shown at 2), {4, 6} merged (shown
    at 4), patch 5 kept, patch 7 dropped."""
    source = torch.tensor([[0, 1, 0, 0, 2, 3, 2, -1]])
    size = torch.tensor([[3, 1, 2, 1]])
    position = torch.tensor([[2, 1, 4, 5]])
    return Reduced(torch.zeros(1, 4, 2), size, position, source), (2, 4)


def patch_pixels(picture, grid, p, frac=0.2):
    """A pixel well inside patch p, away from its frame and its centred size label."""
    h, w = picture.shape[:2]
    i, j = divmod(p, grid[1])
    return picture[int((i + frac) * h / grid[0]), int((j + frac) * w / grid[1])]


def test_overlay_colours_kept_merged_dropped():
    red, grid = hand_made()
    pic = visualize.overlay(grey_image(), red, grid)
    colours = visualize.cluster_colours(2)
    a = visualize.TINT_ALPHA
    for p in (1, 5):  # kept: untouched
        np.testing.assert_allclose(patch_pixels(pic, grid, p), GREY)
    for p, c in ((0, 0), (2, 0), (3, 0), (4, 1), (6, 1)):  # merged: tinted by their cluster's colour
        np.testing.assert_allclose(patch_pixels(pic, grid, p), (1 - a) * GREY + a * colours[c])
    np.testing.assert_allclose(patch_pixels(pic, grid, 7), GREY * visualize.DROPPED_SHADE)
    # every pixel of a patch is the same (the whole patch is painted, not a dot)
    assert np.ptp(pic[:56, :28].reshape(-1, 3), axis=0).max() == 0


def test_rendered_figure_pixels_labels_and_frames():
    red, grid = hand_made()
    fig = visualize.reduction(grey_image(), red, grid)
    fig.canvas.draw()
    canvas = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    ax = fig.axes[0]
    expected = visualize.overlay(grey_image(), red, grid)

    def drawn(p, frac=0.2):
        i, j = divmod(p, grid[1])
        x, y = ax.transData.transform(((j + frac) * 112 / 4, (i + frac) * 112 / 2))
        return canvas[int(round(canvas.shape[0] - y)), int(round(x))]

    for p in range(8):
        np.testing.assert_allclose(drawn(p), patch_pixels(expected, grid, p), atol=2.5 / 255)
    assert np.abs(drawn(0) - drawn(4)).max() > 0.1  # two clusters, two colours
    assert sorted(t.get_text() for t in ax.texts) == ["2", "3"]  # one size label per merged output
    frames = {(int(r.get_x() // 28), int(r.get_y() // 56)): r.get_edgecolor()[:3] for r in ax.patches}
    assert set(frames) == {(2, 0), (1, 0), (0, 1), (1, 1)}  # one frame per output, at the position it keeps
    assert frames[(1, 0)] == frames[(1, 1)] == visualize.KEPT_EDGE
    np.testing.assert_allclose(frames[(2, 0)], visualize.cluster_colours(2)[0])


def test_retained_tells_kept_from_lone_anchors():
    red, grid = hand_made()
    pic = visualize.overlay(grey_image(), red, grid, retained=torch.tensor([1]))
    colours = visualize.cluster_colours(3)  # outputs 0, 2, 3 are merged now: 3 clusters in position order
    a = visualize.TINT_ALPHA
    np.testing.assert_allclose(patch_pixels(pic, grid, 1), GREY)
    np.testing.assert_allclose(patch_pixels(pic, grid, 5), (1 - a) * GREY + a * colours[2])  # a lone anchor
    fig = visualize.reduction(grey_image(), red, grid, retained=[1])
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="every retained patch must be an output of its own"):
        visualize.overlay(grey_image(), red, grid, retained=[0])


def test_real_reduction_one_colour_per_cluster(tmp_path):
    torch.manual_seed(0)
    feats = torch.randn(1, 64, 16)
    red = restore_ext.reduce(feats, 16, base="divprune", keep_ratio=0.5)
    path = tmp_path / "r.png"
    visualize.reduction(visualize.sample_image(112), red, 8, path=str(path))
    assert path.stat().st_size > 1000
    pic = visualize.overlay(grey_image(), red, 8)
    source, size = red.source[0].numpy(), red.size[0].numpy()
    colour_of_slot = {}
    for p, slot in enumerate(source):
        px = tuple(np.round(patch_pixels(pic, (8, 8), p), 9))
        if size[slot] == 1:
            assert px == (GREY,) * 3
        else:
            assert colour_of_slot.setdefault(slot, px) == px  # every member of a cluster in its one colour
    assert len(colour_of_slot) == int((size >= 2).sum())
    assert len(set(colour_of_slot.values())) == len(colour_of_slot)  # distinct colours across clusters


def test_image_forms_agree():
    red, grid = hand_made()
    img = visualize.sample_image(112)
    ref = visualize.overlay(img, red, grid)
    from_tensor = visualize.overlay(torch.from_numpy(img).permute(2, 0, 1), red, grid)
    np.testing.assert_allclose(from_tensor, ref)
    np.testing.assert_allclose(visualize.overlay(img / 255.0, red, grid), ref)


def test_bad_input_names_the_argument():
    red, _ = hand_made()
    with pytest.raises(ValueError, match="reduction: grid 3 x 3 = 9 patches, but reduced has N = 8"):
        visualize.reduction(grey_image(), red, 3)
    with pytest.raises(ValueError, match="reduction: image must be RGB"):
        visualize.overlay(np.zeros((10, 10)), red, (2, 4))
    with pytest.raises(ValueError, match="reduction: reduced must be a restore_ext.Reduced"):
        visualize.overlay(grey_image(), (1, 2), (2, 4))
    bad = red._replace(size=torch.tensor([[3, 1, 1, 1]]))
    with pytest.raises(ValueError, match="reduced.size must equal"):
        visualize.overlay(grey_image(), bad, (2, 4))
    with pytest.raises(ValueError, match="row must index the batch of 1"):
        visualize.overlay(grey_image(), red, (2, 4), row=3)


def test_llava_reduction_matches_reduce_on_projector_outputs():
    transformers = pytest.importorskip("transformers")
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          image_size=112, patch_size=14)
    tc = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=64)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vc, text_config=tc, image_token_id=50)).eval()
    pixels = torch.randn(1, 3, 112, 112)
    red, grid, retained = visualize.llava_reduction(model, pixels, num_tokens=16)
    assert grid == (8, 8) and red.size.shape == (1, 16) and int(red.size.sum()) == 64
    assert retained.shape == (1, 8) and bool((red.size[0, red.source[0, retained[0]]] == 1).all())
    with torch.inference_mode():
        feats = model.model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output[0]
    torch.testing.assert_close(red.tokens, restore_ext.reduce(feats[None], 16).tokens)
