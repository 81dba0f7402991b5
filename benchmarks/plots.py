"""One PNG per op: median time per case, ours and each peer side by side (log scale)."""
import os
import textwrap
from collections import defaultdict


def write_plots(rows, out_dir, stem):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots written")
        return []
    by_op = defaultdict(list)
    for row in rows:
        by_op[row["op"]].append(row)
    paths = []
    for op, op_rows in by_op.items():
        series = {"restore_ext": [r["ours_s"] * 1e3 for r in op_rows]}
        for name in sorted({n for r in op_rows for n in r["peers"]}):
            series[name] = [r["peers"].get(name, {}).get("s", float("nan")) * 1e3 for r in op_rows]
        labels = [textwrap.fill(f"{r['shape']} {r['dtype']}", 16) for r in op_rows]
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(op_rows)), 4.5))
        width = 0.8 / len(series)
        for i, (name, times) in enumerate(series.items()):
            ax.bar([x + i * width for x in range(len(op_rows))], times, width, label=name)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(op_rows))], labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("median time (ms, log)")
        ax.set_title(f"{op} — {op_rows[0]['device']}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{stem}-{op.replace('(', '_').replace(')', '')}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


if __name__ == "__main__":  # re-plot a results JSON: python benchmarks/plots.py results.json OUT_DIR
    import json
    import sys

    data = json.load(open(sys.argv[1]))
    stem = os.path.splitext(os.path.basename(sys.argv[1]))[0]
    print(write_plots(data["rows"], sys.argv[2], stem))
