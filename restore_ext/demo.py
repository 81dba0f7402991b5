"""RESTORE in a LLaVA model, end to end: ``python -m restore_ext.demo`` (``make demo``).

Without ``--model`` it builds a small LLaVA-shaped model with random weights (CLIP-shaped vision tower at
336 px / patch 14 -> 576 visual tokens, an 8-layer Llama) and runs one image prompt four ways: the full model,
pruning alone, pruning + merging without calibration, and RESTORE. It reports the visual tokens before/after,
prefill time, the attention share on visual tokens at layer 0, the KL divergence of the next-token
distribution to the full model, and a generated continuation. Random weights make the numbers illustrative
only (the mechanism is what runs); ``--model PATH`` runs the same on a local LLaVA checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from restore_ext.attention_bias import dense_attention_bias

try:
    from tqdm.auto import tqdm
except ImportError:  # tqdm comes with transformers; a minimal stand-in otherwise

    class tqdm:  # noqa: N801
        def __init__(self, total, desc=""):
            self.total, self.n, self.desc = total, 0, desc

        def update(self, k=1):
            self.n += k
            done = int(30 * self.n / self.total)
            print(f"\r{self.desc} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total}", end="", file=sys.stderr)

        def set_postfix_str(self, s):
            pass

        def close(self):
            print(file=sys.stderr)


def _random_model(device, dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
        vocab_size=4096, max_position_embeddings=4096, pad_token_id=0,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32, vision_feature_layer=-2,
        vision_feature_select_strategy="default", pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).to(device=device, dtype=dtype).eval()
    model.generation_config.pad_token_id = 0
    # LLaVA-1.5's layout: ~35 system tokens, the 576 image placeholders, a ~15-token question.
    g = torch.Generator().manual_seed(1)
    system = torch.randint(100, 4096, (35,), generator=g)
    question = torch.randint(100, 4096, (15,), generator=g)
    ids = torch.cat([system, torch.full((576,), 32), question])[None]
    from restore_ext.visualize import CLIP_MEAN, CLIP_STD, sample_image

    # a synthetic scene (flat sky, hills, houses), normalised as LLaVA-1.5's processor does, so the picture of
    # the reduction shows something a reader can recognise
    image = torch.from_numpy(sample_image(336)).permute(2, 0, 1)[None].float() / 255
    pixel_values = (image - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    inputs = dict(input_ids=ids.to(device), pixel_values=pixel_values.to(device, dtype))
    return model, inputs, None


def _local_model(path, device, dtype, image_path, question):
    try:
        from PIL import Image
    except ImportError as e:
        raise SystemExit("restore_ext.demo --model needs pillow for the image processor: pip install pillow") from e
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    if image_path:
        image = Image.open(image_path).convert("RGB")
    else:  # a synthetic picture, so the demo needs no download
        x = torch.linspace(0, 255, 336)
        h, w = x[None, :].expand(336, 336), x[:, None].expand(336, 336)
        rgb = torch.stack([h, w, h.flip(1)], -1)
        image = Image.fromarray(rgb.to(torch.uint8).numpy())
    text = f"USER: <image>\n{question} ASSISTANT:"
    inputs = processor(images=image, text=text, return_tensors="pt").to(device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model, dict(inputs), processor


class _Layer0Attention:
    """Recomputes layer 0's attention probabilities (with RESTORE's bias when present) from its inputs."""

    def __init__(self, model):
        self.attn = model.model.language_model.layers[0].self_attn
        self.share = None
        self.visual = None  # (B, L) bool, set by the caller for the unreduced model

    def __enter__(self):
        self.handle = self.attn.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, kwargs):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        h = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        b, n, _ = h.shape
        q = module.q_proj(h).view(b, n, -1, module.head_dim).transpose(1, 2)
        k = module.k_proj(h).view(b, n, -1, module.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        logit = module.scaling * q.float() @ k.float().transpose(-1, -2)
        state = kwargs.get("restore_state")
        visual = self.visual
        bias_args = (None, None, None, None)
        if state is not None:
            bias_args = state.attention_bias_args(0)  # (log_size, q_pos, k_pos, table)
            visual = state.visual
        prob = dense_attention_bias(*bias_args, causal=True, scores=logit).softmax(-1)
        last_visual = int(visual[0].nonzero().max())
        # Share of attention on visual keys, for the text queries after the image, averaged over heads and queries.
        self.share = float(prob[:, :, last_visual + 1:, :][..., visual[0]].sum(-1).mean())
        return None


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="local LLaVA checkpoint (folder); default: a small random-weight model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) / float16 / bfloat16 (CUDA default)")
    ap.add_argument("--num-tokens", type=int, default=64, help="visual tokens per image after reduction")
    ap.add_argument("--image", help="image file for --model (default: a synthetic gradient)")
    ap.add_argument("--question", default="Describe the image in detail.")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="timed prefills per variant (best reported)")
    ap.add_argument("--picture", default="restore_demo.png", help="PNG of what the reduction did ('' to skip)")
    args = ap.parse_args(argv)

    from restore_ext.integrations.transformers import apply_restore, remove_restore

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.float16)
    print(f"restore_ext demo: building the model on {args.device} ({dtype}) ...", flush=True)
    if args.model:
        model, inputs, processor = _local_model(args.model, args.device, dtype, args.image, args.question)
    else:
        model, inputs, processor = _random_model(args.device, dtype)
    ids = inputs["input_ids"]
    image_token = model.config.image_token_id
    n_visual = int((ids == image_token).sum())

    variants = {
        "full model": None,
        "prune only": dict(keep_ratio=1.0, calibrate=False),
        "merge, no calibration": dict(calibrate=False),
        "RESTORE": dict(calibrate=True),
    }
    timed = ("full model", "RESTORE")
    steps = len(variants) + len(timed) * (args.repeats + 2)
    bar = tqdm(total=steps, desc="running")
    results = {}
    gen = {}
    with torch.inference_mode():
        for name, kw in variants.items():
            bar.set_postfix_str(name)
            if kw is not None:
                apply_restore(model, num_tokens=args.num_tokens, **kw)
            try:
                with _Layer0Attention(model) as probe:
                    probe.visual = ids == image_token
                    out = model(**inputs)
                bar.update()
                results[name] = dict(logits=out.logits[0, -1].float(), length=out.logits.shape[1], share=probe.share)
                if name in timed:
                    gen[name] = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)[
                        0, ids.shape[1]:
                    ]
                    bar.update()
            finally:
                if kw is not None:
                    remove_restore(model)

        # Prefill timing, full and RESTORE alternating so that other load on the machine hits both alike.
        times = {name: [] for name in timed}
        for i in range(args.repeats + 1):  # round 0 warms up
            for name in timed:
                if variants[name] is not None:
                    apply_restore(model, num_tokens=args.num_tokens, **variants[name])
                try:
                    _sync(args.device)
                    t0 = time.perf_counter()
                    model(**inputs, use_cache=True, logits_to_keep=1)
                    _sync(args.device)
                    if i:
                        times[name].append(time.perf_counter() - t0)
                finally:
                    if variants[name] is not None:
                        remove_restore(model)
                bar.update()
        for name in timed:
            results[name]["time"] = min(times[name])  # best of N: the least disturbed run
    bar.close()

    full = results["full model"]
    logp_full = full["logits"].log_softmax(-1)
    text_tokens = ids.shape[1] - n_visual
    print()
    print("RESTORE demo" + (f" — {args.model}" if args.model else " — small LLaVA-shaped model, RANDOM weights"))
    if not args.model:
        print("  (random weights: the numbers show the mechanism at work, not the paper's accuracy)")
    after = results["RESTORE"]["length"] - text_tokens
    print(f"  visual tokens: {n_visual} -> {after} ({args.num_tokens} per image: half kept by DivPrune, half merged)")
    print(f"  sequence length: {ids.shape[1]} -> {results['RESTORE']['length']} tokens")
    print(
        f"  prefill time (vision tower + reduction + LLM, best of {args.repeats}): full {full['time'] * 1e3:.0f} ms, "
        f"RESTORE {results['RESTORE']['time'] * 1e3:.0f} ms ({full['time'] / results['RESTORE']['time']:.1f}x faster)"
    )
    print("  layer-0 attention share on visual tokens (text queries after the image):")
    for name, r in results.items():
        print(f"    {name:<24s} {100 * r['share']:5.1f} %")
    print("  KL(full || variant) of the next-token distribution:")
    for name, r in results.items():
        if name == "full model":
            continue
        kl = torch.sum(logp_full.exp() * (logp_full - r["logits"].log_softmax(-1)))
        print(f"    {name:<24s} {float(kl):.4f} nats")

    def show(t):
        text = processor.decode(t, skip_special_tokens=True) if processor is not None else ""
        return repr(text) if text.strip() else f"token ids {t.tolist()}"

    print(f"  continuation, full model: {show(gen['full model'])}")
    print(f"  continuation, RESTORE:    {show(gen['RESTORE'])}")
    if args.picture and not hasattr(model.config, "image_grid_pinpoints"):  # LLaVA-NeXT tiles are no one grid
        from restore_ext.visualize import llava_picture

        mean_std = {} if processor is None else dict(mean=processor.image_processor.image_mean,
                                                     std=processor.image_processor.image_std)
        llava_picture(model, inputs["pixel_values"], args.picture, args.num_tokens, **mean_std)
        print(f"  picture of the reduction (kept / merged per cluster / sizes): {args.picture}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
