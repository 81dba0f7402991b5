"""restore_ext microbenchmarks: every op against its peers, side by side in one process.

    python benchmarks/run.py [--quick] [--device cpu|cuda|all] [--only OP] [--shape TEXT ...]

Prints one table (our median, each peer's median, peer/ours ratio: > 1 means we are faster) and writes
benchmarks/results/<device>-<date>.json plus a PNG per op.
"""
import argparse
import datetime
import importlib
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the benchmark modules, and an in-place built restore_ext
from common import device_name, median_seconds, peak_memory_bytes  # noqa: E402
from plots import write_plots  # noqa: E402

MODULES = ["bench_reduction", "bench_attention"]


def fmt_time(s):
    return f"{s * 1e6:9.1f} us" if s < 1e-3 else f"{s * 1e3:9.2f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset that finishes in about 2 minutes on 2 CPU cores")
    ap.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    ap.add_argument("--only", default=None, help="run only this op")
    ap.add_argument("--shape", nargs="+", default=None, metavar="TEXT",
                    help="run only the cases whose shape contains one of these as a word, e.g. --shape N576 'B1 N2880'")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    min_run = 0.2 if args.quick else 1.0
    for device in devices:
        cases = [c for m in MODULES for c in importlib.import_module(m).cases(args.quick, device)]
        cases = [c for c in cases if args.only in (None, c.op)]
        if args.shape:
            cases = [c for c in cases if any(f" {t} " in f" {c.shape} " for t in args.shape)]
        print(f"\n== {device_name(device)} | torch {torch.__version__} | {len(cases)} cases "
              f"({'quick' if args.quick else 'full'}) ==", flush=True)
        rows, start = [], time.time()
        for i, case in enumerate(cases, 1):
            ours = median_seconds(case.ours, device, min_run)
            row = {"op": case.op, "shape": case.shape, "dtype": case.dtype, "device": device, "ours_s": ours,
                   "peers": {}, "ours_peak_bytes": peak_memory_bytes(case.ours, device)}
            if case.flops:
                row["ours_tflops"] = case.flops / ours / 1e12
            for name, fn in case.peers.items():
                try:
                    t = median_seconds(fn, device, min_run)
                    row["peers"][name] = {"s": t, "ratio": t / ours, "peak_bytes": peak_memory_bytes(fn, device)}
                except Exception as e:  # a peer that cannot run this case is reported, not fatal
                    row["peers"][name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            rows.append(row)
            peer_txt = "  ".join(
                f"{n} {fmt_time(p['s']).strip()} (x{p['ratio']:.2f})" if "s" in p else f"{n} n/a"
                for n, p in row["peers"].items())
            tf = f" {row['ours_tflops'] * 1e3:7.1f} GFLOP/s" if case.flops else ""
            elapsed = time.time() - start
            print(f"[{i:2d}/{len(cases)} {elapsed:4.0f}s, ~{elapsed / i * (len(cases) - i):4.0f}s left] {case.op:22s} {case.shape:34s} {case.dtype:8s} "
                  f"ours {fmt_time(ours)}{tf}  | {peer_txt}", flush=True)
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        path = os.path.join(args.out, f"{device}-{stamp}.json")
        with open(path, "w") as f:
            json.dump({"device": device_name(device), "torch": torch.__version__, "date": stamp,
                       "quick": args.quick, "rows": rows}, f, indent=1)
        plots = write_plots(rows, args.out, f"{device}-{stamp}")
        print(f"wrote {path} and {len(plots)} plots  (ratio = peer time / our time; > 1 means restore_ext is faster)")


if __name__ == "__main__":
    main()
