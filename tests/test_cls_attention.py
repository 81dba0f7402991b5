"""[CLS] attention captured by a hook on an SDPA vision tower equals eager attention's weights."""
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

from restore_ext.cls_attention import capture_cls_attention, encoder_layers

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, image_size=40,
            patch_size=8, num_channels=3)  # 25 patches + [CLS]


def clip_pair(dtype=torch.float32):
    torch.manual_seed(0)
    sdpa = CLIPVisionModel(CLIPVisionConfig(**TINY, attn_implementation="sdpa")).to(dtype).eval()
    eager = CLIPVisionModel(CLIPVisionConfig(**TINY, attn_implementation="eager")).to(dtype).eval()
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_hook_equals_eager_cls_row(layer):
    sdpa, eager = clip_pair()
    pixels = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        want = eager(pixels, output_attentions=True).attentions[layer][:, :, 0, :].mean(dim=1)
        with capture_cls_attention(sdpa, layer) as cap:
            assert sdpa.config._attn_implementation == "sdpa"
            out = sdpa(pixels)
            got = cap.pop()
    assert got.shape == (3, 26) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.sum(-1), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, eager(pixels).last_hidden_state, rtol=1e-5, atol=1e-5)
    assert cap.value is None and not encoder_layers(sdpa)[layer]._forward_pre_hooks  # popped, and removed on exit


def test_hook_in_bfloat16_is_within_its_rounding():
    sdpa, eager = clip_pair(torch.bfloat16)
    pixels = torch.randn(2, 3, 40, 40, dtype=torch.bfloat16)
    with torch.no_grad():
        want = eager(pixels, output_attentions=True).attentions[-2][:, :, 0, :].float().mean(dim=1)
        with capture_cls_attention(sdpa, -2) as cap:
            sdpa(pixels)
    torch.testing.assert_close(cap.pop(), want, rtol=2e-2, atol=1e-3)


def test_refusals():
    sdpa, _ = clip_pair()
    with pytest.raises(ValueError, match="capture_cls_attention: layer must be an int in \\[-3, 3\\)"):
        capture_cls_attention(sdpa, 3)
    with pytest.raises(ValueError, match="capture_cls_attention: layer"):
        capture_cls_attention(sdpa, True)
    siglip = SiglipVisionModel(SiglipVisionConfig(**TINY))
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        capture_cls_attention(siglip, -2)
    with capture_cls_attention(sdpa, -2) as cap:
        with pytest.raises(RuntimeError, match="has not run"):
            cap.pop()
