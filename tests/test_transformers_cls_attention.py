"""The bases that rank by the vision tower's [CLS] attention ("vispruner", "holov", "cls") in the transformers
integration (tiny random-weight models, offline, CPU): the scores are the eager attention's [CLS] row at
vision_feature_layer while the tower keeps SDPA, in a forward and in generate (which encodes images ahead of the
first forward); LLaVA-NeXT's packing of them; copies; refusals."""
import copy

import pytest
import torch

from tiny_llava import IMAGE, PAD, greedy, images, prompt, tiny_config, tiny_model

from transformers import (  # noqa: E402
    CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig, LlavaNextForConditionalGeneration,
    SiglipVisionConfig,
)

import restore_ext  # noqa: E402
from restore_ext.holov import holov_indices  # noqa: E402
from restore_ext.integrations import transformers as rt  # noqa: E402
from restore_ext.vispruner import vispruner_indices  # noqa: E402

SELECT = {
    "vispruner": vispruner_indices,
    "holov": holov_indices,
    "cls": lambda features, k, scores: restore_ext.topk_indices(scores, k),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)


@torch.no_grad()
def eager_cls_rows(tower, pixel_values, layer=-2):
    """The [CLS] row (mean over heads) of eager attention's weights at ``layer``, from a copy of the tower."""
    eager = copy.deepcopy(tower)
    eager.set_attn_implementation("eager")
    return eager(pixel_values, output_attentions=True).attentions[layer][:, :, 0, :].mean(dim=1)


class FixedScores:
    """A callable base that ranks by given scores: the reduction a scored base must reproduce."""

    def __init__(self, base, scores):
        self.select, self.scores = SELECT[base], scores

    def __call__(self, features, k):
        return self.select(features, k, self.scores.to(features.device))


@pytest.mark.parametrize("base", ["vispruner", "holov", "cls"])
def test_scored_base_ranks_by_the_eager_cls_row(model, base):
    ids, pv = prompt([1, 2], "img", [3], "img", [4, 5]), images(2, seed=21)
    scores = eager_cls_rows(model.model.vision_tower, pv)[:, 1:]  # "default": the patch columns
    with torch.no_grad():
        rt.apply_restore(model, num_tokens=16, base=FixedScores(base, scores))
        want = model(input_ids=ids, pixel_values=pv).logits
        want_seq, want_steps = greedy(model, ids, pv, steps=3)
        rt.remove_restore(model)
        rt.apply_restore(model, num_tokens=16, base=base)
        assert model.model.vision_tower.config._attn_implementation == "sdpa"
        got = model(input_ids=ids, pixel_values=pv).logits
        seq, steps = greedy(model, ids, pv, steps=3)  # generate encodes the images before its first forward
    assert got.shape[1] == 2 + 16 + 1 + 16 + 2
    assert torch.equal(got, want)
    with torch.no_grad():  # and the scores matter: other ones give another reduction
        rt.remove_restore(model)
        rt.apply_restore(model, num_tokens=16, base=FixedScores(base, scores.flip(-1)))
        assert not torch.allclose(model(input_ids=ids, pixel_values=pv).logits, want)
    assert torch.equal(seq, want_seq) and torch.equal(steps, want_steps)
    rt.remove_restore(model)
    layer = model.model.vision_tower.encoder.layers[-2] if hasattr(model.model.vision_tower, "encoder") else None
    assert "get_image_features" not in vars(model.model)
    assert layer is None or not layer._forward_pre_hooks


def test_copies_capture_with_their_own_tower(model):
    rt.apply_restore(model, num_tokens=16, base="vispruner")
    dup = copy.deepcopy(model)
    with torch.no_grad():
        for p in dup.model.vision_tower.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ids, pv = prompt([1], "img", [2]), images(1, seed=22)
    scores = eager_cls_rows(dup.model.vision_tower, pv)[:, 1:]
    with torch.no_grad():
        got = dup(input_ids=ids, pixel_values=pv).logits
        rt.remove_restore(dup)
        rt.apply_restore(dup, num_tokens=16, base=FixedScores("vispruner", scores))
        want = dup(input_ids=ids, pixel_values=pv).logits
    assert torch.equal(got, want)
    assert rt.is_restore_applied(model) and vars(model.model)["get_image_features"].inner is model.model


def tiny_next(strategy="default"):
    vc = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    cfg = LlavaNextConfig(
        vision_config=vc, text_config=tiny_config().text_config, image_token_id=IMAGE, pad_token_id=PAD,
        image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]], vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(cfg).eval()


@pytest.mark.parametrize("base", ["vispruner", "holov"])
def test_llava_next_scores_follow_the_packed_features(base):
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    m = tiny_next()
    sizes = torch.tensor([[100, 60], [50, 110]])
    pv = torch.randn(2, 5, 3, 56, 56, generator=torch.Generator().manual_seed(9))
    counts = [image_size_to_num_patches(s, m.config.image_grid_pinpoints, 56) for s in sizes]
    crops = torch.cat([p[:c] for p, c in zip(pv, counts)])
    rows = eager_cls_rows(m.model.vision_tower, crops)[:, 1:]  # (crops, 16)
    rt.apply_restore(m, num_tokens=8, base=base)
    with torch.no_grad():
        out = m.model.get_image_features(pv, sizes, return_dict=True)
        ns = [f.shape[0] for f in out.pooler_output]
        first = 0
        for feats, scores, count in zip(out.pooler_output, out.cls_attention, counts):
            assert scores.shape == (feats.shape[0],)
            torch.testing.assert_close(scores[:16], rows[first], rtol=0, atol=1e-5)  # the base crop comes first
            newline = (feats == m.model.image_newline).all(-1)
            assert newline.any() and bool((scores[newline] == 0).all()) and bool((scores[~newline] > 0).all())
            grid = scores[16:][~newline[16:]]  # the unpadded grid: a subset of the other crops' scores
            others = rows[first + 1 : first + count].flatten()
            assert bool(((grid[:, None] - others[None]).abs().amin(1) < 1e-5).all())
            first += count
        ids = torch.tensor([[1, 2] + [IMAGE] * ns[0] + [3] + [IMAGE] * ns[1] + [4, 5]])
        assert m(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits.shape[1] == 2 + 8 + 1 + 8 + 2
        seq = m.generate(input_ids=ids, pixel_values=pv, image_sizes=sizes, max_new_tokens=3, do_sample=False)
    assert seq.shape[1] == ids.shape[1] + 3


def test_refusals(model):
    siglip = LlavaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=112, patch_size=14),
        text_config=tiny_config().text_config, image_token_id=IMAGE, vision_feature_layer=-2,
        vision_feature_select_strategy="full", pad_token_id=PAD,
    )
    with pytest.raises(ValueError, match=r"no \[CLS\] token"):
        rt.apply_restore(LlavaForConditionalGeneration(siglip).eval(), base="holov")
    cfg = tiny_config()
    cfg.vision_feature_layer = [-2, -1]
    with pytest.raises(ValueError, match="apply_restore: base='vispruner' .* concatenates several layers"):
        rt.apply_restore(LlavaForConditionalGeneration(cfg).eval(), base="vispruner")
    with pytest.raises(ValueError, match="vision_feature_select_strategy='full' .* supported: default"):
        rt.apply_restore(tiny_next("full"), base="vispruner")
    rt.apply_restore(model, num_tokens=16, base="holov")
    with pytest.raises(ValueError, match="came without it"):
        model(input_ids=prompt([1], "img", [2]), pixel_values=images(1), vision_feature_layer=-1)
