"""End to end: time to first token (vision tower / reduction / LLM prefill), decode tokens/s and peak memory of a
LLaVA-1.5 or Qwen2.5-VL model, full vs pruning alone vs ToMe-style merging vs RESTORE, at 64 / 128 / 192 visual
tokens.

    python benchmarks/bench_end_to_end.py                          # CPU, LLaVA-1.5-7B shapes scaled by 0.25
    python benchmarks/bench_end_to_end.py --model qwen2_5_vl       # CPU, Qwen2.5-VL-7B shapes scaled by 0.25
    python benchmarks/bench_end_to_end.py --device cuda --scale full   # the real 7B sizes on a GPU

Random weights from the model's config (nothing is downloaded): timing does not depend on the weights. --scale s
multiplies every width and depth of the 7B model by s, keeping head dims, the vocabulary and the token counts
(benchmarks/e2e_models.py: LLaVA-1.5-7B = CLIP ViT-L/14-336 + Vicuna-7B; Qwen2.5-VL-7B-Instruct; both prompts hold
576 image tokens). Every variant runs through the model's own forward on the same prompt; the stages come from
forward hooks on the vision tower, the projector and the language model (CUDA is synchronised in each):
  vision    = vision tower + projector (Qwen: its tower, merger included);   reduction = vision end -> LLM start
  (selection, merging, building the shortened sequence; for the full model, placing the features);
  LLM = language model prefill;   TTFT = the whole prefill call up to the first token id.
- full: the model as it is (SDPA);  prune: DivPrune's K tokens (restore_ext.divprune_indices), positions
  0..L'-1 (Qwen: on all three M-RoPE axes), SDPA;  ToMe: bipartite soft matching down to K tokens
  (benchmarks/bench_reduction.tome_merge), same;  RESTORE: apply_restore(model, num_tokens=K) (DivPrune half,
  merged half, original positions, calibrated attention).
Peak memory: CUDA allocator peak above the weights; on CPU the peak resident set above the level before the
run, sampled every 2 ms (approximate). Writes benchmarks/results/e2e-<model>-<device>-<scale>-<date>.json and a PNG.
"""
import argparse
import datetime
import inspect
import json
import os
import statistics
import sys
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import restore_ext  # noqa: E402
from bench_reduction import tome_merge  # noqa: E402
from common import device_name  # noqa: E402
from e2e_models import MODELS, build  # noqa: E402
from restore_ext.integrations.transformers import apply_restore, remove_restore  # noqa: E402

BUDGETS = (64, 128, 192)


def divprune_only(k):
    return lambda f: f.gather(1, restore_ext.divprune_indices(f, k)[:, :, None].expand(-1, -1, f.shape[2]))


def tome_only(k):
    return lambda f: tome_merge(f, k)[0]


class StageClock:
    """Hooks that timestamp vision tower start, projector end, LLM start and end of each forward."""

    def __init__(self, bench, device):
        inner = bench.model.model
        self.sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
        self.t = {}
        self.handles = [
            bench.vision_in.register_forward_pre_hook(lambda *a: self.mark("vision0")),
            bench.vision_out.register_forward_hook(lambda *a: self.mark("vision1")),
            inner.language_model.register_forward_pre_hook(lambda *a: self.mark("llm0")),
            inner.language_model.register_forward_hook(lambda *a: self.mark("llm1")),
        ]

    def mark(self, name):
        self.sync()
        self.t[name] = time.perf_counter()

    def remove(self):
        for h in self.handles:
            h.remove()


class PeakMemory:
    """CUDA: allocator peak above the level at entry. CPU: resident set peak above entry, sampled every 2 ms."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = max(self.peak, self._rss()) - self.base


def run_once(model, inputs, clock, device, decode_tokens, cache_kw):
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    with torch.inference_mode(), PeakMemory(device) as mem:
        clock.mark("start")
        out = model(**inputs, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        token = out.logits[:, -1].argmax(-1)
        int(token[0])  # the first token is known on the host
        clock.mark("first")
        t = dict(clock.t)
        prompt_len = cache.get_seq_length()
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token[:, None], use_cache=True, **{cache_kw: cache})
            token = out.logits[:, -1].argmax(-1)
        int(token[0])
        decode_s = time.perf_counter() - t0
    return dict(ttft=t["first"] - t["start"], vision=t["vision1"] - t["vision0"], reduction=t["llm0"] - t["vision1"],
                llm=t["llm1"] - t["llm0"], decode_tok_s=decode_tokens / decode_s, peak_bytes=mem.bytes,
                llm_tokens=prompt_len)


def variants(bench):
    """name -> (install, uninstall) on the model."""
    model = bench.model
    out = {"full": (lambda: None, lambda: None)}
    for k in BUDGETS:
        for name, fn in ((f"prune {k}", divprune_only(k)), (f"ToMe {k}", tome_only(k))):
            box = {}
            out[name] = (lambda fn=fn, box=box: box.update(h=model.model.register_forward_pre_hook(
                bench.shorten(fn), with_kwargs=True)), lambda box=box: box["h"].remove())
        out[f"RESTORE {k}"] = (lambda k=k: apply_restore(model, num_tokens=k), lambda: remove_restore(model))
    return out


def plot(rows, title, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written")
        return None
    names = [r["variant"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 0.42 * len(rows) + 1.6), sharey=True,
                                 gridspec_kw=dict(width_ratios=(3, 1)))
    left = [0.0] * len(rows)
    for stage, colour in (("vision", "#4c72b0"), ("reduction", "#dd8452"), ("llm", "#55a868"), ("other", "#999999")):
        ms = [1e3 * (r[stage] if stage != "other" else r["ttft"] - r["vision"] - r["reduction"] - r["llm"])
              for r in rows]
        ax.barh(names, ms, left=left, color=colour, label="LLM prefill" if stage == "llm" else stage)
        left = [a + b for a, b in zip(left, ms)]
    ax.invert_yaxis()
    ax.set_xlabel("time to first token (ms, median)")
    ax.legend(fontsize=8, loc="lower right")
    bx.barh(names, [r["decode_tok_s"] for r in rows], color="#8172b3")
    bx.set_xlabel("decode tokens/s")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llava15", choices=MODELS, help="whose shapes (default LLaVA-1.5-7B)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", default=None, help="'full' or a factor on widths and depths (CPU default 0.25)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) / float16 (CUDA default) / bfloat16")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up (median reported)")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--only", default=None, help="comma-separated variant names (e.g. 'full,RESTORE 64')")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    scale = 1.0 if args.scale == "full" else float(args.scale or (1.0 if cuda else 0.25))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if cuda else torch.float32)
    bench = build(args.model, scale, args.device, dtype)
    model, inputs = bench.model, bench.inputs
    params = sum(p.numel() for p in model.parameters())
    # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name deprecated until 5.40)
    cache_kw = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    clock = StageClock(bench, args.device)
    table = variants(bench)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only.split(",")}
    runs = {name: [] for name in table}
    scale_txt = "full size" if scale == 1.0 else f"scale {scale:g}"
    before, image, after = bench.prompt
    print(f"{bench.title}, {scale_txt} ({params / 1e6:.0f} M parameters, {dtype}), {device_name(args.device)}, "
          f"torch {torch.__version__}; prompt {before} + {image} image + {after} tokens, {args.decode_tokens} decode "
          f"tokens, {args.repeats} rounds + warm-up", flush=True)
    for round_ in range(args.repeats + 1):  # variants alternate within a round: machine load hits all alike
        for name, (install, uninstall) in table.items():
            install()
            try:
                r = run_once(model, inputs, clock, args.device, args.decode_tokens, cache_kw)
            finally:
                uninstall()
            if round_:
                runs[name].append(r)
        print(f"  round {round_}/{args.repeats} done", flush=True)
    clock.remove()
    rows = []
    for name, rs in runs.items():
        rows.append(dict(variant=name, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}))
    full = next((r for r in rows if r["variant"] == "full"), None)
    print(f"\n{'variant':12s} {'LLM tok':>7s} {'TTFT ms':>8s} {'vision':>7s} {'reduce':>7s} {'LLM':>7s} "
          f"{'decode tok/s':>12s} {'peak MB':>8s} {'TTFT vs full':>12s}")
    for r in rows:
        speed = f"{full['ttft'] / r['ttft']:.2f}x" if full else ""
        print(f"{r['variant']:12s} {r['llm_tokens']:7.0f} {r['ttft'] * 1e3:8.1f} {r['vision'] * 1e3:7.1f} "
              f"{r['reduction'] * 1e3:7.1f} {r['llm'] * 1e3:7.1f} {r['decode_tok_s']:12.1f} "
              f"{r['peak_bytes'] / 2**20:8.0f} {speed:>12s}")
    stamp = datetime.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    size = "full" if scale == 1.0 else f"s{scale:g}"
    stem = os.path.join(args.out, f"e2e-{bench.stem}-{'cuda' if cuda else 'cpu'}-{size}-{stamp}")
    load = os.getloadavg()[1]  # 5-minute load average: other work on the machine inflates every time
    meta = dict(model=bench.title, scale=scale, parameters=params, dtype=str(dtype),
                device=device_name(args.device), torch=torch.__version__, date=stamp, repeats=args.repeats,
                decode_tokens=args.decode_tokens, prompt=bench.prompt, load_average_5min=load)
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    title = (f"{bench.title}, {scale_txt}, random weights, {dtype} — {meta['device']}, "
             f"torch {torch.__version__}, {stamp}, load average {load:.1f}")
    png = plot(rows, title, stem + ".png")
    print(f"machine load average (5 min) {load:.1f} on {os.cpu_count()} cores" +
          (": other work shared the CPU, times are inflated and noisy" if load > 0.5 * os.cpu_count() + 1 else ""))
    print(f"wrote {stem}.json" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    main()
