"""RESTORE on tiny random-weight Qwen2.5-VL and Qwen3-VL models (offline, CPU): images, videos, image + video,
several images, left-padded batches, DeepStack. Models and inputs: tests/qwen_models.py.

Tests of the calibration (calibrated_attention's M-RoPE form, docs/ops.md §5b) run twice: with the kernel, and with
the op's float64 reference standing in for it, which checks the integration's own logic (positions, sizes, tables,
cache state) independently of the kernel.
"""
import inspect
import math
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) != 5:
    pytest.skip(f"the integration targets transformers 5.x, found {transformers.__version__}", allow_module_level=True)

from qwen_models import qwen_api  # noqa: E402

if not qwen_api():
    pytest.skip(f"transformers {transformers.__version__}: Qwen's get_rope_index does not take mm_token_type_ids (the "
                "integration refuses it: test_qwen_models.py)", allow_module_level=True)

import restore_ext  # noqa: E402
from restore_ext import reference  # noqa: E402
from restore_ext.attention_bias import dense_attention_bias  # noqa: E402
from restore_ext.integrations import transformers as rt  # noqa: E402
from qwen_models import (  # noqa: E402
    FAMILIES, IMAGE, VIDEO, greedy, make_inputs,
    reference_calibrated_attention, rope_positions, split_rows, tiny_model,
)

# transformers 5.x renamed forward's `past_key_values` to `cache` (keyword and output field)
CACHE = "cache" if "cache" in inspect.signature(transformers.Qwen2_5_VLForConditionalGeneration.forward).parameters \
    else "past_key_values"
IMAGE_AND_VIDEO = [[1, 2, 3], ("image", (4, 6)), [5, 6], ("video", (2, 4, 4)), [7, 8]]  # N = 6 and 8
TWO_IMAGES = [[9], ("image", (4, 4)), [10, 11], ("image", (2, 4)), [12, 13, 14]]  # N = 4 and 2
SECTIONS = {"qwen2_5_vl": ([2, 3, 3], False), "qwen3_vl": ([4, 2, 2], True)}


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(autouse=True)
def _unpatched(request):
    yield
    if "family_model" in request.fixturenames:
        model = request.getfixturevalue("family_model")[1]
        if rt.is_restore_applied(model):
            rt.remove_restore(model)


@pytest.fixture(params=["kernel", "reference"])
def multi_axis(request, monkeypatch):
    """The multi-axis attention the calibrated tests run on: the op's kernel, or its float64 reference."""
    if request.param == "reference":
        use_op(monkeypatch, reference_calibrated_attention)
    return request.param


def use_op(monkeypatch, fn):
    """Makes the integration's calibrated_attention calls go to ``fn``."""
    monkeypatch.setattr(restore_ext, "calibrated_attention", fn)


def record_op_calls(monkeypatch):
    """Records every calibrated_attention call of the integration (running the float64 reference for it)."""
    calls = []

    def spy(q, k, v, log_size=None, q_pos=None, k_pos=None, table=None, causal=True, scale=None):
        calls.append(dict(q=q, k=k, v=v, log_size=log_size, q_pos=q_pos, k_pos=k_pos, table=table, scale=scale))
        return reference_calibrated_attention(q, k, v, log_size, q_pos, k_pos, table, causal, scale)

    use_op(monkeypatch, spy)
    return calls


def expected_prompt(model, inputs, k_of, row=0):
    """The shortened prompt of batch row ``row``, derived independently of the integration: each medium reduced
    with restore_ext.reduce (DivPrune keeps half, the rest merged); kept columns = text + each output's
    representative placeholder; their (t, h, w) ids from the model's own get_rope_index of the full prompt."""
    with torch.no_grad():
        feats = []
        if "pixel_values" in inputs:
            feats += [("image", f) for f in model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True).pooler_output]
        if "pixel_values_videos" in inputs:
            feats += [("video", f) for f in model.model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True).pooler_output]
    ids = inputs["input_ids"]
    cols = {kind: (ids == tok).nonzero() for kind, tok in (("image", IMAGE), ("video", VIDEO))}
    used = {"image": 0, "video": 0}
    keep = torch.ones(ids.shape, dtype=torch.bool)
    keep[(ids == IMAGE) | (ids == VIDEO)] = False
    size = torch.ones(ids.shape)
    size_first = torch.ones(ids.shape)
    for kind, f in feats:
        n = f.shape[0]
        where = cols[kind][used[kind]:used[kind] + n]
        used[kind] += n
        k = k_of(n)
        red = restore_ext.reduce(f[None], k, base="divprune", keep_ratio=0.5)
        r, c = where[red.position[0], 0], where[red.position[0], 1]
        keep[r, c] = True
        size[r, c] = red.size[0].float()
        size_first[r, c] = n / k
    keep &= inputs["attention_mask"].bool()
    pos = rope_positions(model, inputs).permute(1, 2, 0)  # (B, L, 3)
    sel = keep[row]
    return pos[row][sel], size[row][sel], size_first[row][sel]


# ---------------------------------------------------------------------------------------------------------------
def test_noop_equivalence(family_model):
    """K = N and calibrate=False: every image and video keeps all its tokens at their own (t, h, w) ids, so logits
    and greedy output equal the unpatched model's (left-padded batch: image + video in one row, two images in the
    other; DeepStack included for Qwen3-VL)."""
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO, TWO_IMAGES)
    with torch.no_grad():
        ref = model(**inputs).logits
    ref_seq, ref_logits = greedy(model, inputs)
    rt.apply_restore(model, num_tokens=10 ** 6, calibrate=False)
    with torch.no_grad():
        out = model(**inputs).logits
    seq, logits = greedy(model, inputs)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(out[valid], ref[valid], rtol=1e-4, atol=1e-5)
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decode_distance_bias", [False, True])
def test_op_gets_preserved_positions_sizes_and_tables(family_model, monkeypatch, decode_distance_bias):
    """What every layer hands calibrated_attention, against an independent derivation: (t, h, w) ids of the kept
    tokens from get_rope_index of the full prompt; log(size) per key (layer 0: uniform N / K on visual keys); the
    (3, T) decay tables of the model's inv_freq and mrope_section (float64 reference); decode at max id + 1 on all
    three axes with log(size) of the cached keys, and the tables only with decode_distance_bias."""
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO)
    k = 3
    pos, size, size_first = expected_prompt(model, inputs, lambda n: min(k, n))
    rt.apply_restore(model, num_tokens=k, decode_distance_bias=decode_distance_bias)
    calls = record_op_calls(monkeypatch)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        model(input_ids=torch.tensor([[7]]), **{CACHE: getattr(out, CACHE)}, use_cache=True)
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == 2 * layers
    section, interleaved = SECTIONS[family]
    inv_freq = model.model.language_model.rotary_emb.inv_freq
    for layer, c in enumerate(calls[:layers]):
        assert torch.equal(c["q_pos"][0], pos) and torch.equal(c["k_pos"][0], pos)
        s = size_first if layer == 0 else size
        torch.testing.assert_close(c["log_size"][0], s.log(), rtol=0, atol=1e-6)
        t = c["table"].shape[1]
        assert t > int(pos.max())
        want = reference.rope_decay_tables(t, inv_freq, reference.mrope_axis_of_freq(section, len(inv_freq),
                                                                                   interleaved))
        torch.testing.assert_close(c["table"].double(), want, rtol=0, atol=1e-7)
    assert out.logits.shape[1] == len(pos)
    nxt = int(rope_positions(model, inputs).max()) + 1
    for layer, c in enumerate(calls[layers:]):
        if decode_distance_bias:
            assert torch.equal(c["q_pos"][0], torch.tensor([[nxt] * 3])) and c["table"] is not None
        else:
            assert c["q_pos"] is None and c["table"] is None
        s = size_first if layer == 0 else size
        torch.testing.assert_close(c["log_size"][0], torch.cat([s.log(), torch.zeros(1)]), rtol=0, atol=1e-6)


def test_rope_deltas_against_the_shortened_cache(family_model):
    """After a reduced prefill the model's rope_deltas are taken against the shortened length, so transformers'
    own rule (cache length + rope_deltas) puts the next token where RESTORE does: the full prompt's max id + 1."""
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO)
    rt.apply_restore(model, num_tokens=2, calibrate=False)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        embeds = model.get_input_embeddings()(torch.tensor([[7]]))
        theirs = model.model.compute_3d_position_ids(
            input_ids=None, inputs_embeds=embeds, attention_mask=None, image_grid_thw=None, video_grid_thw=None,
            **{CACHE: getattr(out, CACHE)})
    assert getattr(out, CACHE).get_seq_length() == out.logits.shape[1] < inputs["input_ids"].shape[1]
    full_next = int(rope_positions(model, inputs).max()) + 1
    assert theirs.tolist() == [[[full_next]]] * 3


@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_cached_generate_equals_recompute(family_model, multi_axis, sample):
    """Cached generate (decode over cached keys with their log(size) and (t, h, w) ids) gives at every step the
    logits of recomputing prompt + generated prefix without cache (decode_distance_bias=True: decode adds the tables
    as prefill does). Image + video prompt."""
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO, seed=3)
    rt.apply_restore(model, num_tokens=3, decode_distance_bias=True)
    steps = 4
    with torch.no_grad():
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=sample, top_k=0,
                             return_dict_in_generate=True, output_logits=True)
        gen = out.sequences[:, inputs["input_ids"].shape[1]:]
        for t in range(steps):
            longer = dict(inputs)
            pad = torch.ones(1, t, dtype=torch.long)
            longer.update(input_ids=torch.cat([inputs["input_ids"], gen[:, :t]], 1),
                          attention_mask=torch.cat([inputs["attention_mask"], pad], 1),
                          mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], 0 * pad], 1))
            logits = model(**longer, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logits[t], logits, rtol=1e-4, atol=1e-4)
    if not sample:
        assert torch.equal(out.logits[-1].argmax(-1), gen[:, -1])


def test_left_padded_batch_equals_samples_alone(family_model, multi_axis):
    """A left-padded batch (image + video, two images, text only) generates what each prompt does alone; the
    text-only row gets no distance bias, as alone."""
    family, model = family_model
    rows = [IMAGE_AND_VIDEO, TWO_IMAGES, [[20, 21, 22, 23]]]
    rt.apply_restore(model, num_tokens=3)
    seq, logits = greedy(model, make_inputs(family, *rows, seed=5), steps=3)
    for i, single in enumerate(split_rows(family, rows, seed=5)):
        s1, l1 = greedy(model, single, steps=3)
        assert torch.equal(seq[i:i + 1], s1)
        torch.testing.assert_close(logits[i:i + 1], l1, rtol=1e-4, atol=1e-4)


def test_remove_restore_restores_exactly(family_model):
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO, TWO_IMAGES, seed=8)
    before = model.config.text_config._attn_implementation
    with torch.no_grad():
        ref = model(**inputs).logits
        ref_seq, _ = greedy(model, inputs, steps=3)
        rt.apply_restore(model, ratio=0.5, calibrate=False)
        assert model(**inputs).logits.shape[1] < ref.shape[1]
        greedy(model, inputs, steps=3)
        rt.remove_restore(model)
        out = model(**inputs).logits
        seq, _ = greedy(model, inputs, steps=3)
    assert torch.equal(out, ref) and torch.equal(seq, ref_seq)
    assert model.config.text_config._attn_implementation == before
    assert "generate" not in vars(model) and not model.model._forward_pre_hooks
    assert not model.model.language_model._forward_pre_hooks


@pytest.mark.parametrize("budget,k_of", [(dict(num_tokens=5), lambda n: min(5, n)),
                                         (dict(ratio=0.3), lambda n: min(n, max(2, round(0.3 * n))))])
def test_budget_per_image_and_video(family_model, budget, k_of):
    """num_tokens=K (capped at each medium's N) or ratio=r (round(r * N), at least 2) per image and per video."""
    family, model = family_model
    inputs = make_inputs(family, [[1], ("image", (8, 8)), [2], ("video", (2, 6, 4)), [3], ("image", (2, 2)), [4]])
    ns = [16, 12, 1]
    rt.apply_restore(model, calibrate=False, **budget)
    with torch.no_grad():
        length = model(**inputs).logits.shape[1]
    text = int(((inputs["input_ids"] != IMAGE) & (inputs["input_ids"] != VIDEO)).sum())
    assert length == text + sum(k_of(n) for n in ns)


def test_deepstack_reduced_with_the_same_clusters():
    """Qwen3-VL DeepStack: the features added after the first decoder layers are reduced with the main features'
    assignment: a retained token keeps its own feature (bit for bit), a merged output gets the plain mean of its
    cluster, and each lands on the slot of its reduced token (row-major over the shortened batch)."""
    model = tiny_model("qwen3_vl")
    inputs = make_inputs("qwen3_vl", IMAGE_AND_VIDEO, TWO_IMAGES, seed=4)
    k = 3
    with torch.no_grad():
        img = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
        vid = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                             return_dict=True)
    # media in the order the shortened sequence holds them: row 0 image then video; row 1 two images
    media = [(img, 0), (vid, 0), (img, 1), (img, 2)]
    want_main, want_ds = [], [[] for _ in img.deepstack_features]
    for out, i in media:
        main = out.pooler_output[i]
        red = restore_ext.reduce(main[None], min(k, main.shape[0]), base="divprune", keep_ratio=0.5)
        want_main.append(red.tokens[0])
        lengths = [f.shape[0] for f in out.pooler_output]
        for layer, feats in enumerate(out.deepstack_features):
            if isinstance(feats, torch.Tensor):  # older transformers: one tensor of every item's tokens
                feats = feats.split(lengths)
            f = feats[i].double()
            mean = torch.stack([f[red.source[0] == j].mean(0) for j in range(red.size.shape[1])])
            retained = red.size[0] == 1
            mean[retained] = f[red.position[0][retained]]
            want_ds[layer].append(mean)
    seen = {}

    def spy(lm, args, kwargs):
        seen.update(kwargs)

    rt.apply_restore(model, num_tokens=k, calibrate=False)
    handle = model.model.language_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    mask = seen["visual_pos_masks"]
    assert int(mask.sum()) == sum(t.shape[0] for t in want_main) == 3 + 3 + 3 + 2
    torch.testing.assert_close(seen["inputs_embeds"][mask], torch.cat(want_main), rtol=0, atol=0)
    assert len(seen["deepstack_visual_embeds"]) == len(want_ds) == 2
    for got, want in zip(seen["deepstack_visual_embeds"], want_ds):
        want = torch.cat(want)
        exact = torch.cat([rt_size == 1 for rt_size in [
            restore_ext.reduce(out.pooler_output[i][None], min(k, out.pooler_output[i].shape[0])).size[0]
            for out, i in media]])
        assert torch.equal(got[exact].double(), want[exact])  # retained tokens: their own feature
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_bias_really_applied(family_model, multi_axis):
    """At every layer the patched attention equals eager attention with the multi-axis bias matrix of the float64
    reference, built here from the model's own get_rope_index ids of the kept tokens, log(size) (layer 0: N / K on
    visual keys) and the decay tables of the model's inv_freq and mrope_section; and the bias changes the result."""
    family, model = family_model
    inputs = make_inputs(family, IMAGE_AND_VIDEO, seed=6)
    k = 3
    pos, size, size_first = expected_prompt(model, inputs, lambda n: min(k, n))
    section, interleaved = SECTIONS[family]
    inv_freq = model.model.language_model.rotary_emb.inv_freq
    tables = reference.rope_decay_tables(512, inv_freq, reference.mrope_axis_of_freq(section, len(inv_freq),
                                                                                    interleaved))
    rt.apply_restore(model, num_tokens=k)
    calls = []

    def probe(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        out, _ = rt.restore_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kw)
        calls.append(dict(layer=module.layer_idx, q=query, k=key, v=value, scale=scaling, out=out))
        return out, None

    transformers.AttentionInterface.register("restore_probe", probe)
    model.set_attn_implementation({"text_config": "restore_probe"})
    with torch.no_grad():
        model(**inputs)
    assert len(calls) == model.config.text_config.num_hidden_layers
    for c in calls:
        s = size_first if c["layer"] == 0 else size
        bias = dense_attention_bias(s.log()[None], pos[None], pos[None], tables, causal=True,
                                    scores=torch.zeros(1, 1, len(pos), len(pos), dtype=torch.float64))
        q, kk, v = c["q"].double(), c["k"].double(), c["v"].double()
        rep = q.shape[1] // kk.shape[1]
        kk, v = kk.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = c["scale"] * q @ kk.transpose(-1, -2)
        expected = ((scores + bias).softmax(-1) @ v).transpose(1, 2)
        torch.testing.assert_close(c["out"].double(), expected, rtol=1e-4, atol=1e-5)
        causal = torch.ones(len(pos), len(pos), dtype=torch.bool).tril()
        plain = (scores.masked_fill(~causal, -math.inf).softmax(-1) @ v).transpose(1, 2)
        assert (c["out"].double() - plain).abs().max() > 1e-3


def test_axis_of_freq_is_what_the_models_rotary_code_does(family_model):
    """The axis of each rotary frequency, read off the model's own rotary code (whichever transformers version lays
    it out where), equals the docs/ops.md §4b rule for the family, at the tiny size and at the real models' size
    (head_dim 128: [16, 24, 24] chunked, [24, 20, 20] interleaved); a model whose layout differs is refused."""
    from restore_ext.integrations.transformers.adapters import adapter_for
    from restore_ext.integrations.transformers.adapters.qwen_vl import rotary_axis_of_freq

    family, model = family_model
    section, interleaved = SECTIONS[family]
    rotary = model.model.language_model.rotary_emb
    f = rotary.inv_freq.shape[0]
    assert rotary_axis_of_freq(rotary, section).tolist() == reference.mrope_axis_of_freq(section, f, interleaved)
    real = [16, 24, 24] if family == "qwen2_5_vl" else [24, 20, 20]
    head_dim = {} if family == "qwen2_5_vl" else dict(head_dim=128)  # Qwen2.5-VL: hidden / heads
    big = tiny_model(family, hidden_size=256, num_attention_heads=2, num_key_value_heads=1, **head_dim,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": real})
    axis = rotary_axis_of_freq(big.model.language_model.rotary_emb, real)
    assert axis.tolist() == reference.mrope_axis_of_freq(real, 64, interleaved)
    assert torch.bincount(axis).tolist() == real
    adapter = type(adapter_for(model))()
    adapter.interleaved = not interleaved
    with pytest.raises(ValueError, match="lays out mrope_section"):
        adapter.check_model(model)


def test_errors(family_model):
    family, model = family_model
    with pytest.raises(ValueError, match="give num_tokens or ratio, not both"):
        rt.apply_restore(model, num_tokens=4, ratio=0.5)
    for bad in (0.0, 1.5, "0.5"):
        with pytest.raises(ValueError, match="ratio must be a number in"):
            rt.apply_restore(model, ratio=bad)
    assert not rt.is_restore_applied(model)
    dynamic = dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0,
                                    "mrope_section": SECTIONS[family][0]})
    with pytest.raises(ValueError, match="rope_type"):
        rt.apply_restore(tiny_model(family, **dynamic), num_tokens=4)
    if family == "qwen2_5_vl":
        sliding = tiny_model(family, use_sliding_window=True, sliding_window=16, max_window_layers=1)
        with pytest.raises(ValueError, match="sliding"):
            rt.apply_restore(sliding, num_tokens=4)
    rt.apply_restore(model, num_tokens=4, calibrate=False)
    with pytest.raises(ValueError, match="already applied"):
        rt.apply_restore(model, num_tokens=4)
    inputs = make_inputs(family, IMAGE_AND_VIDEO)
    without = {key: v for key, v in inputs.items() if key != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**without)
    truncated = dict(inputs, input_ids=inputs["input_ids"].clone())
    truncated["input_ids"][0, inputs["input_ids"][0] == IMAGE] = 1  # image placeholders gone
    with pytest.raises(ValueError, match="placeholder"):
        model(**truncated)


LONG = os.environ.get("RESTORE_EXT_LONG_TESTS") == "1"


@pytest.mark.parametrize("frames", [4, pytest.param(16, marks=pytest.mark.skipif(
    not LONG, reason="65,536-token video: about a minute on 2 cores; set RESTORE_EXT_LONG_TESTS=1 to run it"))])
def test_long_video_reduces_without_n_by_n_memory(frames):
    """A video of frames x 64 x 64 merged tokens (16 frames: 65,536) goes through the patched Qwen2.5-VL on CPU
    with peak memory far below one N x N float32 matrix (1 GiB at 16,384 tokens, 16 GiB at 65,536): the reduction
    streams its similarities. The vision tower is skipped (mm_encoder_outputs) so the test measures RESTORE, not
    transformers' ViT; the text model is 16 wide to keep the O(N^2 D) similarity work of the reduction small."""
    from conftest import run_isolated

    code = f"""
        import resource, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from qwen_models import make_inputs, tiny_model
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from restore_ext.integrations import transformers as rt
        model = tiny_model("qwen2_5_vl", hidden_size=16, intermediate_size=32, num_attention_heads=2,
                           num_key_value_heads=1, rope_parameters={{"rope_type": "default", "rope_theta": 10000.0,
                                                                   "mrope_section": [2, 1, 1]}})
        inputs = make_inputs("qwen2_5_vl", [[1, 2], ("video", ({frames}, 128, 128)), [3, 4]])
        inputs.pop("pixel_values_videos")
        feats = torch.randn({frames} * 64 * 64, 16, generator=torch.Generator().manual_seed(0))
        inputs["mm_encoder_outputs"] = {{"video": BaseModelOutputWithPooling(pooler_output=(feats,))}}
        rt.apply_restore(model, num_tokens=64, calibrate=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            out = model(**inputs)
        print(out.logits.shape[1], (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
    """
    proc = run_isolated(code, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    length, grown_mib = map(int, proc.stdout.strip().splitlines()[-1].split())
    assert length == 2 + 1 + 64 + 1 + 2
    assert grown_mib < 256, f"peak memory grew by {grown_mib} MiB"
