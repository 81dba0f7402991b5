"""A RESTORE-patched model copied with copy.deepcopy or pickle is a patched model of its own: its forward,
generate and hooks act on the copy's weights, and remove_restore of one leaves the other as it was."""
import copy
import io
import pickle

import pytest
import torch

from tiny_llava import greedy, images, prompt, tiny_model

from restore_ext.integrations import transformers as rt  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)


def _perturb(m):
    with torch.no_grad():
        for p in m.model.language_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))


def _check_own_patch(m, ids, pv, reference_logits):
    """m runs RESTORE with its own weights: the shortened forward, and generate's first-step logits equal to it."""
    with torch.no_grad():
        logits = m(input_ids=ids, pixel_values=pv).logits
        assert logits.shape[1] == 2 + 16 + 2  # shortened
        seq, step_logits = greedy(m, ids, pv, steps=2)
    torch.testing.assert_close(logits, reference_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step_logits[:, 0], logits[:, -1], rtol=1e-5, atol=1e-6)
    return seq


def test_deepcopy_is_patched_on_its_own(model):
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1, seed=11)
    with torch.no_grad():
        unpatched = model(input_ids=ids, pixel_values=pv).logits
    rt.apply_restore(model, num_tokens=16)
    dup = copy.deepcopy(model)
    _perturb(dup)  # the copy now computes something else than the original
    assert rt.is_restore_applied(dup) and dup._restore_patch is not model._restore_patch
    with torch.no_grad():
        ref_model = model(input_ids=ids, pixel_values=pv).logits
        ref_dup = dup(input_ids=ids, pixel_values=pv).logits
    assert not torch.allclose(ref_model, ref_dup)
    seq_dup = _check_own_patch(dup, ids, pv, ref_dup)
    _check_own_patch(model, ids, pv, ref_model)

    rt.remove_restore(model)  # the copy keeps its patch
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pv).logits, unpatched)
    assert rt.is_restore_applied(dup)
    assert torch.equal(_check_own_patch(dup, ids, pv, ref_dup), seq_dup)

    rt.remove_restore(dup)  # and its own removal restores the copy's own unpatched model
    with torch.no_grad():
        assert dup(input_ids=ids, pixel_values=pv).logits.shape[1] == ids.shape[1]
    assert "generate" not in vars(dup) and not dup.model._forward_pre_hooks and not dup.model._forward_hooks


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickled_model_round_trips(how):
    """A patched model pickles (pickle, torch.save) and loads as a patched model of its own. Pickled before its
    first forward: transformers installs local-closure output-capturing hooks on the vision tower at the first
    forward that captures hidden states (LLaVA's always does), which makes any model, patched or not, unpicklable
    from then on; RESTORE adds nothing unpicklable."""
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1, seed=12)
    model = rt.apply_restore(tiny_model(seed=3), num_tokens=16)
    if how == "pickle":
        loaded = pickle.loads(pickle.dumps(model))
    else:
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
    assert rt.is_restore_applied(loaded) and loaded._restore_patch is not model._restore_patch
    with torch.no_grad():
        patched = model(input_ids=ids, pixel_values=pv).logits
    seq = _check_own_patch(loaded, ids, pv, patched)
    assert torch.equal(greedy(model, ids, pv, steps=2)[0], seq)
    rt.remove_restore(loaded)
    assert rt.is_restore_applied(model)  # the original keeps its patch
    with torch.no_grad():
        unpatched = tiny_model(seed=3)(input_ids=ids, pixel_values=pv).logits
        assert torch.equal(loaded(input_ids=ids, pixel_values=pv).logits, unpatched)
