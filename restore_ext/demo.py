"""RESTORE in a multimodal model, end to end: ``python -m restore_ext.demo`` (``make demo``).

Without ``--model`` it builds a small model with random weights, ``--family llava`` (default: a CLIP-shaped vision
tower at 336 px / patch 14 and an 8-layer Llama), ``qwen2_5_vl`` or ``qwen3_vl`` (the same width and depth, M-RoPE,
Qwen3-VL with DeepStack), each with one 576-token image, and runs the prompt on the full model, then for each base
method (DivPrune; VisPruner and HoloV where the vision tower has a [CLS] token, i.e. LLaVA) pruning alone vs
RESTORE, and DivPrune + merging without calibration. It reports the visual tokens before/after, prefill time, a
table of the attention share on visual tokens at layer 0 and the KL divergence of the next-token distribution to
the full model per variant, and a generated continuation. Random weights make the numbers illustrative only (the
mechanism is what runs); ``--model PATH`` runs the same on a local LLaVA, Qwen2.5-VL or Qwen3-VL checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from restore_ext.attention_bias import dense_attention_bias
from restore_ext.demo_models import FAMILIES, local_model, random_model, visual_mask

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


class _Layer0Attention:
    """Layer 0's attention probabilities, recomputed from the query and key (after RoPE) that the model's attention
    module hands its attention function, plus RESTORE's bias when the model is patched. Works for every family: it
    wraps whatever attention function the text model uses (sdpa, or RESTORE's) for the duration of one forward."""

    NAME = "restore_demo_probe"

    def __init__(self, model):
        self.model = model
        self.share = None
        self.visual = None  # (B, L) bool, set by the caller for the unreduced model

    def __enter__(self):
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        self.previous = self.model.config.get_text_config(decoder=True)._attn_implementation
        delegate = ALL_ATTENTION_FUNCTIONS.get_interface(self.previous, sdpa_attention_forward)

        def probe(module, query, key, value, attention_mask, **kwargs):
            if getattr(module, "layer_idx", None) == 0:
                self._record(query, key, kwargs.get("scaling"), kwargs.get("restore_state"))
            return delegate(module, query, key, value, attention_mask, **kwargs)

        AttentionInterface.register(self.NAME, probe)
        self.model.set_attn_implementation({"text_config": self.NAME})
        return self

    def __exit__(self, *exc):
        self.model.set_attn_implementation({"text_config": self.previous})

    def _record(self, query, key, scaling, state):
        q, k = query.float(), key.float().repeat_interleave(query.shape[1] // key.shape[1], 1)
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        logit = scaling * q @ k.transpose(-1, -2)
        visual = self.visual
        bias_args = (None, None, None, None)
        if state is not None:
            bias_args = state.attention_bias_args(0)  # (log_size, q_pos, k_pos, table): 1-D or M-RoPE positions
            visual = state.visual
        prob = dense_attention_bias(*bias_args, causal=True, scores=logit).softmax(-1)
        last_visual = int(visual[0].nonzero().max())
        # Share of attention on visual keys, for the text queries after the image, averaged over heads and queries.
        self.share = float(prob[:, :, last_visual + 1:, :][..., visual[0]].sum(-1).mean())


BASES = {"divprune": "DivPrune", "vispruner": "VisPruner", "holov": "HoloV"}
MAIN = "RESTORE (DivPrune)"  # the variant that is timed, generated from and drawn


def demo_variants(model):
    """The demo's runs as {label: apply_restore keywords (None: the full model)}, and {base label: why not run}.

    Each base method gets two rows, prune only (its ``num_tokens`` tokens, no merge, no calibration) and RESTORE
    (half kept by the base, half merged, calibrated), as the paper's table compares them. VisPruner and HoloV rank
    by the vision tower's [CLS] attention: a tower without one (Qwen's) gets no rows for them, and the demo says why.
    """
    from restore_ext.integrations.transformers.adapters import adapter_for

    variants, skipped = {"full model": None}, {}
    for base, label in BASES.items():
        if base != "divprune":
            try:
                adapter_for(model).check_cls_attention(model, base)
            except ValueError as e:
                skipped[label] = str(e).removeprefix("apply_restore: ")
                continue
        variants[f"prune only ({label})"] = dict(base=base, keep_ratio=1.0, calibrate=False)
        variants[f"RESTORE ({label})"] = dict(base=base, calibrate=True)
    variants["merge, no calibration (DivPrune)"] = dict(calibrate=False)
    return variants, skipped


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="local LLaVA / Qwen2.5-VL / Qwen3-VL checkpoint (folder); default: a small "
                    "random-weight model of --family")
    ap.add_argument("--family", default="llava", choices=FAMILIES, help="the random-weight model's family")
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
        model, inputs, processor = local_model(args.model, args.device, dtype, args.image, args.question)
    else:
        model, inputs, processor = random_model(args.family, args.device, dtype)
    ids = inputs["input_ids"]
    visual = visual_mask(model, ids)
    n_visual = int(visual.sum())

    variants, skipped = demo_variants(model)
    timed = ("full model", MAIN)
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
                    probe.visual = visual
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
    shape = {"llava": "LLaVA", "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL"}[args.family]
    print("RESTORE demo" + (f" — {args.model}" if args.model else f" — small {shape}-shaped model, RANDOM weights"))
    if not args.model:
        print("  (random weights: the numbers show the mechanism at work, not the paper's accuracy)")
    after = results[MAIN]["length"] - text_tokens
    print(f"  visual tokens: {n_visual} -> {after} ({args.num_tokens} per image: half kept by DivPrune, half merged)")
    print(f"  sequence length: {ids.shape[1]} -> {results[MAIN]['length']} tokens")
    print(
        f"  prefill time (vision tower + reduction + LLM, best of {args.repeats}): full {full['time'] * 1e3:.0f} ms, "
        f"RESTORE {results[MAIN]['time'] * 1e3:.0f} ms ({full['time'] / results[MAIN]['time']:.1f}x faster)"
    )
    print("  per variant: layer-0 attention share on visual tokens (text queries after the image) and")
    print("  KL(full || variant) of the next-token distribution")
    print(f"    {'variant':<34s} {'visual share':>12s} {'KL (nats)':>10s}")
    for name, r in results.items():
        kl = torch.sum(logp_full.exp() * (logp_full - r["logits"].log_softmax(-1)))
        print(f"    {name:<34s} {100 * r['share']:11.1f}% {'-' if name == 'full model' else f'{float(kl):.4f}':>10s}")
    for label, why in skipped.items():
        print(f"    {label}: not run ({why})")

    def show(t):
        text = processor.decode(t, skip_special_tokens=True) if processor is not None else ""
        return repr(text) if text.strip() else f"token ids {t.tolist()}"

    print(f"  continuation, full model: {show(gen['full model'])}")
    print(f"  continuation, RESTORE:    {show(gen[MAIN])}")
    # the picture draws LLaVA's one image grid (LLaVA-NeXT tiles and Qwen's patch sequences are not drawn yet)
    if args.picture and model.config.model_type == "llava":
        from restore_ext.visualize import llava_picture

        mean_std = {} if processor is None else dict(mean=processor.image_processor.image_mean,
                                                     std=processor.image_processor.image_std)
        llava_picture(model, inputs["pixel_values"], args.picture, args.num_tokens, **mean_std)
        print(f"  picture of the reduction (kept / merged per cluster / sizes): {args.picture}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
