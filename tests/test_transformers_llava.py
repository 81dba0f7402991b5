"""The transformers integration on tiny random-weight LLaVA / LLaVA-NeXT models (offline, CPU, a few seconds):
no-op equivalence, the bias really applied, cached generate, decode state, left-padded batches, the variants,
inputs_embeds and positional calls, remove_restore. Errors: test_transformers_errors.py; generate modes:
test_transformers_generate_guard.py; copies: test_transformers_model_copies.py; padding:
test_transformers_padding.py."""
import math

import pytest
import torch

from tiny_llava import IMAGE, N, PAD, greedy, images, left_pad, prompt, tiny_config, tiny_model, with_cache

from transformers import AttentionInterface, CLIPVisionConfig  # noqa: E402

import restore_ext  # noqa: E402
from restore_ext.integrations import transformers as rt  # noqa: E402
from restore_ext.integrations.transformers.visual_reduction import reduce_tokens  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _unpatched(model):
    yield
    if rt.is_restore_applied(model):
        rt.remove_restore(model)


# ---------------------------------------------------------------------------------------------------------------
def test_noop_equivalence(model):
    """num_tokens = N, calibrate=False: every image keeps all its tokens (N/2 retained + N/2 singleton anchors)
    at their own positions, so logits and greedy output equal the unpatched model's. Two images, GQA."""
    ids = prompt([1, 2, 3], "img", [4, 5], "img", [6, 7, 8])
    pv = images(2)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pv).logits
        ref_seq, ref_logits = greedy(model, ids, pv)
        rt.apply_restore(model, num_tokens=N, calibrate=False)
        out = model(input_ids=ids, pixel_values=pv).logits
        seq, logits = greedy(model, ids, pv)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


def _probe(model):
    """Swaps the text model's attention for restore attention that also records its inputs and output."""
    calls = []

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        out, _ = rt.restore_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kw)
        calls.append(
            dict(layer=module.layer_idx, q=query, k=key, v=value, scale=scaling, state=kw["restore_state"], out=out)
        )
        return out, None

    AttentionInterface.register("restore_probe", probe)
    model.set_attn_implementation({"text_config": "restore_probe"})
    return calls


def test_bias_really_applied(model):
    """At every layer the patched attention equals eager attention with the bias matrix of the op contract
    (docs/ops.md) built here independently: log(size) per key (layer 0: uniform N / num_tokens on visual keys),
    table[q_pos - k_pos] from the model's rotary inv_freq, preserved positions (visual_start + original index; text
    after the image at its full position), causal mask."""
    num_tokens = 16
    pre, post = [1, 2, 3], [4, 5, 6, 7]
    ids, pv = prompt(pre, "img", post), images(1)
    rt.apply_restore(model, num_tokens=num_tokens)
    calls = _probe(model)
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pv)
        feats = model.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output[0][None]
    # The expected reduced sequence, from the library's own reduction of the projector output.
    red = reduce_tokens(feats, rt.RestoreSettings(num_tokens, "divprune", 0.5, "reference"))
    start = len(pre)
    vis_pos = start + red.position[0]
    pos = torch.cat([torch.arange(start), vis_pos, torch.arange(len(post)) + start + N])
    size = torch.cat([torch.ones(start), red.size[0].float(), torch.ones(len(post))])
    size_first = torch.cat([torch.ones(start), torch.full((num_tokens,), N / num_tokens), torch.ones(len(post))])
    assert int(red.size.sum()) == N and red.position.shape[1] == num_tokens
    table = restore_ext.distance_bias_table(int(pos.max()) + 1, model.model.language_model.rotary_emb.inv_freq)
    bias_pos = table[(pos[:, None] - pos[None, :]).clamp_min(0)]
    assert len(calls) == 2
    for c in calls:
        assert torch.equal(c["state"].q_pos[0], pos) and torch.equal(c["state"].k_pos[0], pos)
        q, k, v = c["q"].double(), c["k"].double(), c["v"].double()
        rep = q.shape[1] // k.shape[1]
        assert rep == 2  # GQA
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = size_first if c["layer"] == 0 else size
        logit = c["scale"] * q @ k.transpose(-1, -2) + s.double().log() + bias_pos.double()
        causal = torch.ones(len(pos), len(pos), dtype=torch.bool).tril()
        prob = logit.masked_fill(~causal, -math.inf).softmax(-1)
        expected = (prob @ v).transpose(1, 2)
        torch.testing.assert_close(c["out"].double(), expected, rtol=1e-4, atol=1e-5)
        plain = (
            (c["scale"] * q @ k.transpose(-1, -2)).masked_fill(~causal, -math.inf).softmax(-1) @ v
        ).transpose(1, 2)
        assert (c["out"].double() - plain).abs().max() > 1e-3  # the bias changes the result


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_cached_generate_equals_recompute(model, sample):
    """generate with the KV cache (decode steps over cached keys with their log(size) and positions) gives, at every
    step, the logits of recomputing the whole prompt + generated prefix without cache under the same rules
    (decode_distance_bias=True, so decode adds the table as prefill does)."""
    ids, pv = prompt([1, 2], "img", [3, 4, 5]), images(1, seed=3)
    rt.apply_restore(model, num_tokens=16, decode_distance_bias=True)
    steps = 5
    with torch.no_grad():
        torch.manual_seed(0)
        out = model.generate(
            input_ids=ids, pixel_values=pv, max_new_tokens=steps, min_new_tokens=steps, do_sample=sample,
            top_k=0, return_dict_in_generate=True, output_logits=True,
        )
        gen = out.sequences[:, ids.shape[1]:]
        for t in range(steps):
            full = torch.cat([ids, gen[:, :t]], 1)
            logits = model(input_ids=full, pixel_values=pv, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[t], logits, rtol=1e-4, atol=1e-4)
        if not sample:
            assert torch.equal(out.logits[steps - 1].argmax(-1), gen[:, -1])


def test_decode_adds_log_size_only_by_default(model):
    """Default decode: log(size) of cached keys, no distance table; the table only with decode_distance_bias."""
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1, seed=4)
    rt.apply_restore(model, num_tokens=16)
    calls = _probe(model)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pv, use_cache=True)
        model(input_ids=torch.tensor([[7]]), **with_cache(out))
    prefill, decode = calls[0]["state"], calls[2]["state"]
    assert prefill.table is not None and decode.table is None
    assert decode.num_keys == prefill.num_keys + 1 and int(decode.q_pos) == 2 + N + 2  # last original position + 1
    assert torch.equal(decode.log_size[:, :-1], prefill.log_size) and float(decode.log_size[0, -1]) == 0.0
    assert torch.equal(decode.log_size_first[:, :-1], prefill.log_size_first)


def test_left_padded_batch_equals_one_by_one(model):
    """A left-padded batch (rows with 2 and 1 images, different lengths) generates what each prompt does alone."""
    rows = [prompt([1, 2, 3], "img", [4], "img", [5, 6]), prompt([7], "img", [8, 9, 10, 11, 12])]
    pvs = [images(2, seed=5), images(1, seed=6)]
    ids, mask = left_pad(rows)
    rt.apply_restore(model, num_tokens=16)
    seq, logits = greedy(model, ids, torch.cat(pvs), mask)
    for i, (r, pv) in enumerate(zip(rows, pvs)):
        s1, l1 = greedy(model, r, pv)
        assert torch.equal(seq[i:i + 1], s1)
        torch.testing.assert_close(logits[i:i + 1], l1, rtol=1e-4, atol=1e-4)


def test_prune_only_and_merge_without_calibration_differ(model):
    """keep_ratio=1 prunes alone; calibrate=False merges without bias; both shorten the sequence to num_tokens."""
    ids, pv = prompt([1, 2], "img", [3]), images(1, seed=7)
    res = {}
    for name, kw in dict(prune=dict(keep_ratio=1.0, calibrate=False), merge=dict(calibrate=False), restore={}).items():
        rt.apply_restore(model, num_tokens=8, **kw)
        with torch.no_grad():
            res[name] = model(input_ids=ids, pixel_values=pv).logits
        rt.remove_restore(model)
        assert res[name].shape[1] == 2 + 8 + 1
    assert not torch.allclose(res["prune"], res["merge"]) and not torch.allclose(res["merge"], res["restore"])


def test_inputs_embeds_and_positional_calls(model):
    """inputs_embeds (placeholders found by their embedding) and positional arguments reach the same reduction."""
    ids, pv = prompt([1, 2], "img", [3, 4, 5]), images(1, seed=10)
    rt.apply_restore(model, num_tokens=16)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pv).logits
        emb = model.get_input_embeddings()(ids)
        torch.testing.assert_close(model(inputs_embeds=emb, pixel_values=pv).logits, ref, rtol=1e-5, atol=1e-6)
        hidden = model.model(ids, pv).last_hidden_state
        torch.testing.assert_close(model.lm_head(hidden), ref, rtol=1e-5, atol=1e-6)
        seq = model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=3, do_sample=False)[:, ids.shape[1]:]
        assert torch.equal(model.generate(inputs_embeds=emb, pixel_values=pv, max_new_tokens=3, do_sample=False), seq)


def test_remove_restore_restores_exactly(model):
    ids, pv = prompt([1, 2], "img", [3, 4]), images(1, seed=8)
    sdpa_before = model.config.text_config._attn_implementation
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pv).logits
        ref_seq, _ = greedy(model, ids, pv)
        rt.apply_restore(model, num_tokens=16)
        assert model.config.text_config._attn_implementation == "restore"
        assert model.config.vision_config._attn_implementation == sdpa_before  # vision tower untouched
        model(input_ids=ids, pixel_values=pv)
        greedy(model, ids, pv)
        rt.remove_restore(model)
        out = model(input_ids=ids, pixel_values=pv).logits
        seq, _ = greedy(model, ids, pv)
    assert torch.equal(out, ref) and torch.equal(seq, ref_seq)
    assert model.config.text_config._attn_implementation == sdpa_before
    assert "generate" not in vars(model) and not model._forward_pre_hooks and not model.model._forward_pre_hooks
    assert not model.model._forward_hooks and "_restore_patch" not in vars(model.model)


def test_llava_next_same_mechanism():
    """LLaVA-NeXT (anyres: a different token count per image, image_newline tokens included): no-op equivalence at
    num_tokens >= every image's count, and a reduced generate that shortens each image to num_tokens."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    vc = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=56, patch_size=14
    )
    cfg = LlavaNextConfig(
        vision_config=vc, text_config=tiny_config().text_config, image_token_id=IMAGE, pad_token_id=PAD,
        image_grid_pinpoints=[[56, 112], [112, 56], [112, 112]], vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    m = LlavaNextForConditionalGeneration(cfg).eval()
    sizes = torch.tensor([[100, 60], [50, 110]])
    pv = torch.randn(2, 5, 3, 56, 56, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ns = [f.shape[0] for f in m.model.get_image_features(pv, sizes, return_dict=True).pooler_output]
        assert ns[0] != ns[1]
        ids = torch.tensor([[1, 2] + [IMAGE] * ns[0] + [3] + [IMAGE] * ns[1] + [4, 5]])
        ref = m(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
        ref_seq = m.generate(input_ids=ids, pixel_values=pv, image_sizes=sizes, max_new_tokens=4, do_sample=False)
        rt.apply_restore(m, num_tokens=max(ns), calibrate=False)
        out = m(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits
        seq = m.generate(input_ids=ids, pixel_values=pv, image_sizes=sizes, max_new_tokens=4, do_sample=False)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        assert torch.equal(seq, ref_seq)
        rt.remove_restore(m)
        rt.apply_restore(m, num_tokens=8)
        assert m(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits.shape[1] == 2 + 8 + 1 + 8 + 2
        seq = m.generate(input_ids=ids, pixel_values=pv, image_sizes=sizes, max_new_tokens=3, do_sample=False)
        assert seq.shape[1] == ids.shape[1] + 3
        rt.remove_restore(m)
        # dynamic resolution: a budget per image proportional to its own token count (rounded half up)
        rt.apply_restore(m, ratio=0.3)
        ks = [math.floor(0.3 * n + 0.5) for n in ns]
        assert ks[0] != ks[1]
        assert m(input_ids=ids, pixel_values=pv, image_sizes=sizes).logits.shape[1] == 2 + ks[0] + 1 + ks[1] + 2
        seq = m.generate(input_ids=ids, pixel_values=pv, image_sizes=sizes, max_new_tokens=3, do_sample=False)
        assert seq.shape[1] == ids.shape[1] + 3
