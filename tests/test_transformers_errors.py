"""What the transformers integration refuses, and how: unsupported models and settings at apply_restore, bad
argument types at once (not later), output_attentions, a changed attention implementation, labels, truncated
images, caches changed behind RESTORE's back. Never a silent fallback."""
import pytest
import torch

from tiny_llava import CACHE, images, prompt, tiny_config, tiny_model, with_cache

from transformers import (  # noqa: E402
    AttentionInterface,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    MistralConfig,
)

from restore_ext.integrations import transformers as rt  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)
    model.config.text_config.output_attentions = False
    model.set_attn_implementation("sdpa")


def test_errors(model):
    with pytest.raises(ValueError, match="LlamaForCausalLM is not supported"):
        rt.apply_restore(LlamaForCausalLM(tiny_config().text_config))
    mistral = MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, sliding_window=32,
    )
    with pytest.raises(ValueError, match="sliding_window"):
        rt.apply_restore(LlavaForConditionalGeneration(tiny_config(text_config=mistral)))
    dyn = tiny_config(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="rope_type"):
        rt.apply_restore(LlavaForConditionalGeneration(dyn))
    for bad in (dict(num_tokens=0), dict(keep_ratio=1.5), dict(rule="nope")):
        with pytest.raises(ValueError):
            rt.apply_restore(model, **bad)
    assert not rt.is_restore_applied(model)
    with pytest.raises(ValueError, match="not applied"):
        rt.remove_restore(model)

    ids, pv = prompt([1], "img", [2]), images(1)
    rt.apply_restore(model, num_tokens=16)
    with pytest.raises(ValueError, match="already applied"):
        rt.apply_restore(model)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(input_ids=ids, pixel_values=pv, num_beams=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids=ids, pixel_values=pv, labels=ids)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=ids[:, :-5], pixel_values=pv)  # truncated image
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pv, use_cache=True)
        cache = with_cache(out)[CACHE]
        cache.crop(-1)  # changed behind RESTORE's back
        with pytest.raises(ValueError, match="does not describe"):
            model(input_ids=torch.tensor([[3]]), **{CACHE: cache})
        with pytest.raises(RuntimeError, match="without a restore_state"):
            model.model.language_model(input_ids=ids[:, :1])


@pytest.mark.parametrize(
    "bad, name",
    [
        (dict(num_tokens=True), "num_tokens"),
        (dict(num_tokens=16.0), "num_tokens"),
        (dict(num_tokens="16"), "num_tokens"),
        (dict(num_tokens=torch.tensor(16.0)), "num_tokens"),
        (dict(num_tokens=torch.tensor([16])), "num_tokens"),
        (dict(keep_ratio="0.5"), "keep_ratio"),
        (dict(keep_ratio=None), "keep_ratio"),
        (dict(keep_ratio=True), "keep_ratio"),
        (dict(keep_ratio=float("nan")), "keep_ratio"),
        (dict(keep_ratio=-0.1), "keep_ratio"),
        (dict(calibrate="no"), "calibrate"),
        (dict(decode_distance_bias=None), "decode_distance_bias"),
        (dict(base="cls"), "base"),
        (dict(base=None), "base"),
        (dict(rule=None), "rule"),
        (dict(num_tokens=16, ratio=0.5), "give num_tokens or ratio, not both"),
        (dict(ratio=0.0), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(ratio="0.5"), "ratio"),
        (dict(ratio=True), "ratio"),
        (dict(ratio=float("nan")), "ratio"),
    ],
)
def test_bad_arguments_rejected_at_once(model, bad, name):
    """Each bad argument raises a ValueError naming it from apply_restore itself, and nothing is installed."""
    with pytest.raises(ValueError, match=rf"apply_restore: {name}"):
        rt.apply_restore(model, **bad)
    assert not rt.is_restore_applied(model) and "generate" not in vars(model) and not model.model._forward_pre_hooks


def test_integer_tensor_num_tokens_like_reduce(model):
    """A 0-d integer tensor (as restore_ext.reduce accepts) is the same budget as the int."""
    ids, pv = prompt([1, 2], "img", [3]), images(1, seed=13)
    with torch.no_grad():
        rt.apply_restore(model, num_tokens=16)
        ref = model(input_ids=ids, pixel_values=pv).logits
        rt.remove_restore(model)
        rt.apply_restore(model, num_tokens=torch.tensor(16), keep_ratio=torch.tensor(0.5).item())
        out = model(input_ids=ids, pixel_values=pv).logits
    assert out.shape[1] == 2 + 16 + 1 and torch.equal(out, ref)


@pytest.mark.parametrize("route", ["forward keyword", "config", "generate"])
def test_output_attentions_refused(model, route):
    """RESTORE's fused attention never forms the attention matrix: asking for it is an error, not empty tuples.
    (transformers itself refuses config.output_attentions = True unless the attention is eager, so the config
    route is a model configured for eager attention weights before apply_restore.)"""
    ids, pv = prompt([1, 2], "img", [3]), images(1)
    if route == "config":
        model.set_attn_implementation("eager")
        model.config.text_config.output_attentions = True
    rt.apply_restore(model, num_tokens=16)
    with pytest.raises(ValueError, match="output_attentions.*no attention weights"), torch.no_grad():
        if route in ("forward keyword", "config"):
            model(input_ids=ids, pixel_values=pv, **({"output_attentions": True} if route != "config" else {}))
        else:
            model.generate(
                input_ids=ids, pixel_values=pv, max_new_tokens=2, output_attentions=True, return_dict_in_generate=True
            )


def _plain_sdpa(*args, **kwargs):  # a user-registered attention function that does not run RESTORE's
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


AttentionInterface.register("plain_sdpa", _plain_sdpa)


@pytest.mark.parametrize("impl", ["eager", "sdpa", {"text_config": "eager"}, "plain_sdpa"])
def test_attention_implementation_changed_after_apply_is_an_error(model, impl):
    """set_attn_implementation after apply_restore would keep the shortened sequence but drop calibration: the
    next forward (and generate) raises, saying what happened and what to do, whether the new implementation is
    one of transformers' own (refused before the forward) or a user-registered one that does not call RESTORE's
    (found after it: not every layer ran calibrated attention); remove_restore still restores the model exactly."""
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1, seed=14)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pv).logits
    rt.apply_restore(model, num_tokens=16)
    model.set_attn_implementation(impl)
    with pytest.raises(RuntimeError, match="attention implementation .*changed after apply_restore"), torch.no_grad():
        model(input_ids=ids, pixel_values=pv)
    with pytest.raises(RuntimeError, match="attention implementation .*changed after apply_restore"), torch.no_grad():
        model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=2)
    assert rt.is_restore_applied(model)
    rt.remove_restore(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, pixel_values=pv).logits, ref, rtol=1e-5, atol=1e-6)
