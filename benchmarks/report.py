"""Turn a pytest-benchmark JSON of benchmarks/test_logprobs.py into a markdown table in
benchmarks/RESULTS.md and a PNG chart.

    python benchmarks/report.py bench.json [--results benchmarks/RESULTS.md] [--png PATH]

The table replaces the section of the same kind (GPU results, or the CPU harness check)
between its markers, or is appended. A CPU run is labelled as a harness check and gets a
chart only if --png is given, so that it cannot pass for the GPU figures.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLOOR_TFLOPS = 798.0  # H100 SXM dense bf16 peak, the floor (8 N H V flops)
ORDER = ("prefopt-triton", "torch-eager", "torch-compile-chunked", "liger", "cce")


def load_rows(data: dict) -> list[dict]:
    rows = []
    for bench in data["benchmarks"]:
        info = dict(bench["extra_info"])
        if "fwd_bwd_ms" not in info:
            continue
        info["wall_median_ms"] = bench["stats"]["median"] * 1e3
        rows.append(info)
    key = lambda r: (r["N"], r["H"], r["V"], r["case"],  # noqa: E731
                     ORDER.index(r["provider"]) if r["provider"] in ORDER else 99)
    return sorted(rows, key=key)


def _commit(data: dict) -> str:
    info = data.get("commit_info") or {}
    commit = info.get("id")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=True, cwd=HERE).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    return commit[:12] + (" (dirty)" if info.get("dirty") else "")


def _fmt(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _spread(stats) -> str:
    if not stats:
        return "n/a"
    return f"{stats['min_ms']:,.2f}-{stats['max_ms']:,.2f} ({stats['reps']})"


def is_gpu(rows: list[dict]) -> bool:
    return bool(rows) and not rows[0]["device"].startswith("cpu")


def markdown(data: dict, rows: list[dict]) -> str:
    first = rows[0]
    gpu = is_gpu(rows)
    title = ("GPU results" if gpu else
             "CPU smoke run: a harness check, not a performance figure")
    lines = [f"#### {title}", "",
             f"- device: {first['device']}; date: {data.get('datetime', '?')}; "
             f"commit: {_commit(data)}",
             f"- torch {first['torch']}, triton {first['triton']} "
             f"({first.get('triton_mode', 'compiled')}), CUDA {first['cuda']}; "
             f"dtype {first['dtype']}; timer: {first['timer']}",
             "- fwd+bwd uses a random per-token upstream gradient for logp (and entropy); "
             "TFLOP/s counts 8 N H V flops; extra peak = peak memory of one fwd+bwd beyond "
             "its inputs and the gradients dh, dW it returns.",
             ""]
    paths = sorted({(b.get("dh_mm"), b.get("dw_mm")) for r in rows
                    if (b := r.get("triton_backward"))})
    if paths:
        lines[-1:-1] = ["- prefopt-triton backward GEMMs (path taken on this torch build): "
                        + "; ".join(f"dh {dh}, dW {dw}" for dh, dw in paths)]
    if not gpu:
        lines += ["These numbers come from tiny shapes on a CPU and say nothing about the "
                  "kernels' speed; they only show that the suite runs end to end.", ""]
    lines += ["| provider | N | H | V | case | entropy (nats) | fwd ms | fwd+bwd ms "
              "| fwd+bwd min-max ms (calls) | TFLOP/s "
              "| extra peak MiB | returns entropy | version |",
              "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['provider']} | {r['N']} | {r['H']} | {r['V']} | {r['case']} | "
            f"{r['mean_entropy_nats']:.2f} | {_fmt(r['fwd_ms'], 2)} | "
            f"{_fmt(r['fwd_bwd_ms'], 2)} | {_spread(r.get('fwd_bwd_stats'))} | "
            f"{_fmt(r['tflops'], 1 if gpu else 4)} | "
            f"{_fmt(r['extra_peak_mib'], 0)} | {'yes' if r['entropy'] else 'no'} | "
            f"{r['provider_version']} |")
    if gpu:
        lines += ["", "Floor at 798 TF/s: " + ", ".join(
            f"N={n} H={h} V={v}: {8 * n * h * v / FLOOR_TFLOPS / 1e9:.1f} ms"
            for n, h, v in sorted({(r['N'], r['H'], r['V']) for r in rows}))]
    return "\n".join(lines) + "\n"


def update_results(path: Path, section: str, kind: str) -> None:
    begin, end = f"<!-- report:{kind}:begin -->", f"<!-- report:{kind}:end -->"
    block = f"{begin}\n{section}{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def chart(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["N"], r["H"], r["V"], r["case"]) for r in rows})
    providers = [p for p in ORDER if any(r["provider"] == p for r in rows)]
    gpu = is_gpu(rows)
    fig, axes = plt.subplots(1, 2 if gpu else 1, figsize=(13 if gpu else 7, 4.5),
                             squeeze=False)
    width = 0.8 / max(1, len(providers))
    panels = [("fwd_bwd_ms", "fwd+bwd (ms)")] + ([("extra_peak_mib", "extra peak (MiB)")]
                                                 if gpu else [])
    for ax, (field, label) in zip(axes[0], panels):
        for i, provider in enumerate(providers):
            values = []
            for g in groups:
                match = [r for r in rows if (r["N"], r["H"], r["V"], r["case"]) == g
                         and r["provider"] == provider]
                values.append(match[0][field] if match and match[0][field] is not None
                              else float("nan"))
            ax.bar([k + i * width for k in range(len(groups))], values, width, label=provider)
        if field == "fwd_bwd_ms" and gpu:
            for k, (n, h, v, _) in enumerate(groups):
                floor = 8 * n * h * v / FLOOR_TFLOPS / 1e9
                ax.hlines(floor, k - width / 2, k + 0.8 - width / 2, colors="k",
                          linestyles="dashed", label="floor (798 TF/s)" if k == 0 else None)
        if field == "extra_peak_mib":
            ax.set_yscale("log")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))])
        ax.set_xticklabels([f"N={n} H={h}\nV={v} {c}" for n, h, v, c in groups], fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    device = rows[0]["device"]
    fig.suptitle(f"token log-probs, {rows[0]['dtype']}, {device}" if gpu else
                 "CPU smoke run: harness check only, NOT a performance figure")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--png", type=Path, default=None,
                        help="chart path (default: benchmarks/logprobs.png for GPU runs; "
                             "no chart for CPU runs unless given)")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    rows = load_rows(data)
    if not rows:
        print(f"{args.json}: no log-prob benchmark rows (was --benchmark-enable given?)",
              file=sys.stderr)
        return 1
    kind = "gpu" if is_gpu(rows) else "cpu-smoke"
    update_results(args.results, markdown(data, rows), kind)
    png = args.png or (HERE / "logprobs.png" if kind == "gpu" else None)
    if png is not None:
        chart(rows, png)
    print(f"updated {args.results} ({kind})" + (f", wrote {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
