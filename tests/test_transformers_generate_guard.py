"""The generate guard of the transformers integration: every generation mode is either supported (greedy and
sampling, tested here by the keyword and the positional GenerationConfig routes alike) or refused with a clear
ValueError by every route (keyword, positional GenerationConfig, generation_config=, the model's own
generation_config): beam search, assisted / prompt-lookup decoding, chunked prefill, contrastive search,
custom_generate, caches other than the dynamic one."""
import pytest
import torch

from tiny_llava import images, prompt, tiny_model

from transformers import GenerationConfig  # noqa: E402

from restore_ext.integrations import transformers as rt  # noqa: E402

MODES = {
    "beam search": (dict(num_beams=2), "beam search"),
    "beam sampling": (dict(num_beams=2, do_sample=True), "beam"),
    "prompt lookup": (dict(prompt_lookup_num_tokens=2), "assisted|prompt.lookup"),
    "chunked prefill": (dict(prefill_chunk_size=8), "chunked prefill"),
    "contrastive search": (dict(penalty_alpha=0.6, top_k=4), "contrastive"),
    "static cache": (dict(cache_implementation="static"), "cache_implementation"),
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    defaults = model.generation_config.to_dict()
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)
    model.generation_config = GenerationConfig(**defaults)


def _route(model, route, ids, pv, opts):
    if route == "keyword":
        return model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=2, **opts)
    if route == "positional config":
        return model.generate(ids, GenerationConfig(max_new_tokens=2, **opts), pixel_values=pv)
    if route == "generation_config keyword":
        config = GenerationConfig(max_new_tokens=2, **opts)
        return model.generate(input_ids=ids, pixel_values=pv, generation_config=config)
    assert route == "model default"
    for k, v in opts.items():
        setattr(model.generation_config, k, v)
    return model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=2)


ROUTES = ["keyword", "positional config", "generation_config keyword", "model default"]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("mode", list(MODES))
def test_unsupported_modes_refused_by_every_route(model, mode, route):
    opts, message = MODES[mode]
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1)
    rt.apply_restore(model, num_tokens=16)
    with pytest.raises(ValueError, match=rf"apply_restore: .*({message})"):
        _route(model, route, ids, pv, opts)


@pytest.mark.parametrize("positional", [False, True], ids=["keyword", "positional"])
def test_assistant_model_refused(model, positional):
    ids, pv = prompt([1, 2], "img", [3]), images(1)
    rt.apply_restore(model, num_tokens=16)
    with pytest.raises(ValueError, match="apply_restore: .*assist"):
        if positional:  # generate(inputs, generation_config, logits_processor, stopping_criteria,
            #                      prefix_allowed_tokens_fn, synced_gpus, assistant_model)
            model.generate(ids, None, None, None, None, None, model, pixel_values=pv, max_new_tokens=2)
        else:
            model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=2, assistant_model=model)


def test_custom_generate_refused(model):
    ids, pv = prompt([1], "img", [2]), images(1)
    rt.apply_restore(model, num_tokens=16)
    with pytest.raises(ValueError, match="apply_restore: .*custom_generate"):
        model.generate(input_ids=ids, pixel_values=pv, custom_generate=lambda **kw: None)


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_supported_modes_same_by_every_route(model, sample):
    """Greedy and sampled generation give the same tokens whether their options come as keywords, a positional
    GenerationConfig, generation_config= or the model's own generation_config, and all run RESTORE (each equals
    the tokens of the RESTORE forward pass recomputed step by step)."""
    ids, pv = prompt([1, 2], "img", [3, 4, 5]), images(1, seed=2)
    opts = dict(do_sample=sample, top_k=0, min_new_tokens=2) if sample else dict(do_sample=False, min_new_tokens=2)
    rt.apply_restore(model, num_tokens=16, decode_distance_bias=True)
    results = []
    with torch.no_grad():
        for route in ROUTES:
            torch.manual_seed(0)
            results.append(_route(model, route, ids, pv, opts))
        gen = results[0][:, ids.shape[1]:]
        for t in range(gen.shape[1]):
            full = torch.cat([ids, gen[:, :t]], 1)
            step = model(input_ids=full, pixel_values=pv, use_cache=False).logits[:, -1]
            assert step.shape[0] == 1 and (sample or torch.equal(step.argmax(-1), gen[:, t]))
    for r in results[1:]:
        assert torch.equal(r, results[0])
