"""vLLM offline throughput with and without RESTORE: requests/s, prompt tokens/s, output tokens/s and mean time to
first token, on LLaVA-1.5-7B's or Qwen2.5-VL-7B's shapes scaled to the machine (random weights, built offline:
nothing downloaded).

    bash scripts/vllm_env.sh .venv-vllm                                  # or `make bench-vllm`, which does both
    .venv-vllm/bin/python benchmarks/bench_vllm.py                       # CPU, scale 0.125
    .venv-vllm/bin/python benchmarks/bench_vllm.py --family qwen2_5_vl --scale 0.25
    .venv-vllm/bin/python benchmarks/bench_vllm.py --scale 1 --dtype bfloat16   # the real 7B sizes (a GPU)

--scale s multiplies every width and depth of the real model by s (benchmarks/model_configs.py), keeping head dims,
the vocabulary and 576 visual tokens per image (LLaVA: 336 pixels; Qwen2.5-VL: 672 pixels, merged 2 x 2). The tokenizer is the tests' tiny offline one (its ids are all below the model's
vocabulary; outputs are not detokenized). Each engine runs in its own interpreter (vLLM engines do not shut down
cleanly enough to share one): plain vLLM with the plugin switched off (VLLM_PLUGINS=""), and RESTORE through
`hf_overrides=restore_ext.integrations.vllm.hf_overrides(num_tokens=K)`. Both get the same prompts (one distinct
random image each), greedy, `ignore_eos` so every request decodes exactly --max-tokens, after one warm-up request.
TTFT is vLLM's own per-request first-token latency (arrival to first token): in an offline batch it includes the
wait for a scheduling slot. Prompt tokens/s counts the tokens each engine's LLM actually took (RESTORE's prompts
are shorter), so requests/s is the like-for-like figure. Writes benchmarks/results/vllm-<family>-<device>-scale<s>-<date>.json.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS_VLLM = os.path.join(os.path.dirname(HERE), "tests", "vllm")
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1",  # loopback only
       "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "2"}
# family -> (the real model, its prompt with one image, image side in pixels: LLaVA's 336 and for Qwen2.5-VL the side
# that gives the same 576 visual tokens, 48 x 48 patches of 14 merged 2 x 2)
FAMILIES = {"llava": ("LLaVA-1.5-7B", "USER: <image>\nWhat is shown in this image? Describe it briefly. ASSISTANT:", 336),
            "qwen2_5_vl": ("Qwen2.5-VL-7B", "USER: <|vision_start|><|image_pad|><|vision_end|>What is shown in this "
                           "image? Describe it briefly. ASSISTANT:", 672)}


def _save_weights_as_vllm_loads_them(path: str):
    """vLLM's LLaVA loader wants the CLIP weights under vision_tower.vision_model.* as in llava-hf (tiny_models.py)."""
    from safetensors.torch import load_file, save_file

    weights = os.path.join(path, "model.safetensors")
    sd = load_file(weights)
    sd = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
          for k, v in sd.items()}
    save_file(sd, weights, metadata={"format": "pt"})


def build_checkpoint(family: str, scale: float, out_dir: str) -> tuple[str, int]:
    """The real model's config scaled by `scale`, random weights, the tests' tiny tokenizer, the real image
    processor settings. Returns (path, parameter count)."""
    import torch

    sys.path[:0] = [HERE, TESTS_VLLM]
    import model_configs
    import tiny_models
    import tiny_qwen

    torch.manual_seed(0)
    side, path = FAMILIES[family][2], os.path.join(out_dir, f"{family}-scale{scale:g}")
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    if family == "llava":
        from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

        tok = tiny_models._tokenizer()
        cfg = model_configs.llava15_config(scale)
        cfg.image_token_id = tok.convert_tokens_to_ids("<image>")
        cfg.text_config.bos_token_id, cfg.text_config.eos_token_id = 0, 1
        model = LlavaForConditionalGeneration(cfg)
        images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        processor = LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=14, chat_template=template,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1)
    else:
        from transformers import (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
                                  Qwen2VLVideoProcessor)

        tok = tiny_qwen._tokenizer()
        ids = {name: tok.convert_tokens_to_ids(t) for name, t in (
            ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
        model = Qwen2_5_VLForConditionalGeneration(model_configs.qwen2_5_vl_config(scale, **ids))
        size = {"shortest_edge": side * side, "longest_edge": side * side}
        kw = dict(size=size, patch_size=14, merge_size=2, temporal_patch_size=2)
        processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tok,
                                        video_processor=Qwen2VLVideoProcessor(**kw), chat_template=template)
    model = model.to(torch.float32)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    if family == "llava":
        _save_weights_as_vllm_loads_them(path)
    return path, sum(p.numel() for p in model.parameters())


def run_engine(spec: dict) -> dict:
    """One engine in this interpreter: warm-up, then the timed batch. Returns the measurements."""
    import numpy as np
    from PIL import Image
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec["model"], dtype=spec["dtype"], enforce_eager=True, max_model_len=1024,
              max_num_seqs=spec["requests"], max_num_batched_tokens=4096, limit_mm_per_prompt={"image": 1},
              enable_prefix_caching=False, disable_log_stats=False, **spec["engine"])
    _, prompt, side = FAMILIES[spec.get("family", "llava")]
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
            for _ in range(spec["requests"] + 1)]
    params = SamplingParams(max_tokens=spec["max_tokens"], temperature=0.0, ignore_eos=True, detokenize=False)
    llm.generate([{"prompt": prompt, "multi_modal_data": {"image": pics[-1]}}], params, use_tqdm=False)  # warm-up
    prompts = [{"prompt": prompt, "multi_modal_data": {"image": p}} for p in pics[:-1]]
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outs)
    output_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    ttft = [o.metrics.first_token_latency for o in outs if o.metrics is not None]
    if len(ttft) != len(outs):
        raise RuntimeError("bench_vllm: vLLM returned no per-request metrics (disable_log_stats must be False)")
    return {"wall_s": wall, "requests": len(outs), "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
            "prompt_len": len(outs[0].prompt_token_ids), "requests_per_s": len(outs) / wall,
            "prompt_tokens_per_s": prompt_tokens / wall, "output_tokens_per_s": output_tokens / wall,
            "mean_ttft_s": statistics.fmean(ttft)}


def run_in_subprocess(spec: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--engine-spec", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, **ENV, **env}, cwd=TESTS_VLLM)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"bench_vllm: engine failed (exit {proc.returncode})\n{proc.stdout[-3000:]}\n"
                       f"{proc.stderr[-6000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=sorted(FAMILIES), default="llava")
    ap.add_argument("--scale", type=float, default=0.125, help="times LLaVA-1.5-7B's widths and depths")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=20)
    ap.add_argument("--num-tokens", type=int, default=64, help="RESTORE's visual tokens per image")
    ap.add_argument("--engine-spec", help=argparse.SUPPRESS)  # internal: run one engine and print RESULT
    args = ap.parse_args(argv)
    if args.engine_spec:
        print("RESULT " + json.dumps(run_engine(json.loads(args.engine_spec))), flush=True)
        return

    import torch
    import vllm
    from restore_ext.integrations.vllm import hf_overrides

    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        path, params = build_checkpoint(args.family, args.scale, tmp)
        base = {"model": path, "family": args.family, "dtype": args.dtype, "requests": args.requests, "max_tokens": args.max_tokens}
        runs = {"vLLM": run_in_subprocess({**base, "engine": {}}, {"VLLM_PLUGINS": ""}),
                f"vLLM + RESTORE {args.num_tokens}": run_in_subprocess(
                    {**base, "engine": {"hf_overrides": hf_overrides(num_tokens=args.num_tokens)}}, {})}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{FAMILIES[args.family][0]} x {args.scale:g} ({params / 1e6:.0f} M parameters, random weights), {args.dtype}, "
          f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}, vLLM {vllm.__version__}; "
          f"{args.requests} requests x 1 image (576 visual tokens), {args.max_tokens} output tokens each")
    print("| engine | LLM prompt tokens / request | requests/s | prompt tokens/s | output tokens/s | mean TTFT | "
          "requests/s vs vLLM |\n|---|---|---|---|---|---|---|")
    ref = runs["vLLM"]["requests_per_s"]
    for name, r in runs.items():
        print(f"| {name} | {r['prompt_len']} | {r['requests_per_s']:.3f} | {r['prompt_tokens_per_s']:.1f} | "
              f"{r['output_tokens_per_s']:.2f} | {r['mean_ttft_s']:.2f} s | {r['requests_per_s'] / ref:.2f}x |")
    out = os.path.join(HERE, "results", f"vllm-{args.family}-{device}-scale{args.scale:g}-{datetime.date.today()}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"family": args.family, "scale": args.scale, "parameters": params, "dtype": args.dtype, "device": device,
                   "torch": torch.__version__, "vllm": vllm.__version__, "runs": runs}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
