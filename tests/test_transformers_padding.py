"""Padding after shortening: a left-padded batch whose rows shorten by different amounts (an image row and a
text-only row) drops the columns that are padding in every row, so the batch is only as long as its longest
shortened row, with exactly the logits each row has alone."""
import pytest
import torch

from tiny_llava import N, greedy, images, left_pad, prompt, tiny_model

from restore_ext.integrations import transformers as rt  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)


def test_image_row_and_text_row_keep_the_saving(model):
    image_row = prompt([1, 2, 3], "img", [4, 5])  # 3 + 64 + 2 tokens -> 3 + 16 + 2
    text_row = torch.arange(1, 31)[None]  # 30 text tokens
    pv = images(1, seed=15)
    ids, mask = left_pad([image_row, text_row])
    assert ids.shape[1] == 3 + N + 2
    with torch.no_grad():
        text_unpatched = model(input_ids=text_row).logits
        rt.apply_restore(model, num_tokens=16)
        out = model(input_ids=ids, pixel_values=pv, attention_mask=mask).logits
        alone_image = model(input_ids=image_row, pixel_values=pv).logits
        alone_text = model(input_ids=text_row).logits
    assert out.shape[1] == max(3 + 16 + 2, 30)  # not 3 + 64 + 2: the saving is kept
    torch.testing.assert_close(out[0, -alone_image.shape[1]:], alone_image[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[1], alone_text[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(alone_text, text_unpatched, rtol=1e-5, atol=1e-5)  # text rows are not calibrated

    seq, logits = greedy(model, ids, pv, mask, steps=4)
    for i, (row, row_pv) in enumerate([(image_row, pv), (text_row, None)]):
        s1, l1 = greedy(model, row, row_pv, steps=4)
        assert torch.equal(seq[i:i + 1], s1)
        torch.testing.assert_close(logits[i:i + 1], l1, rtol=1e-4, atol=1e-4)


def test_columns_padded_in_every_row_are_dropped(model):
    """Two image rows padded on the left by more than any row needs: the all-padding columns go, each row's
    logits stay those it has alone."""
    rows = [prompt([1], "img", [2, 3]), prompt([4, 5, 6], "img", [7])]
    pv = images(2, seed=16)
    ids, mask = left_pad(rows)
    extra = 5
    ids = torch.cat([torch.zeros(2, extra, dtype=ids.dtype), ids], 1)
    mask = torch.cat([torch.zeros(2, extra, dtype=mask.dtype), mask], 1)
    rt.apply_restore(model, num_tokens=8)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pv, attention_mask=mask).logits
        alone = [model(input_ids=r, pixel_values=pv[i:i + 1]).logits for i, r in enumerate(rows)]
    assert out.shape[1] == max(a.shape[1] for a in alone) == 1 + 8 + 3
    for i, a in enumerate(alone):
        torch.testing.assert_close(out[i, -a.shape[1]:], a[0], rtol=1e-6, atol=1e-6)
