"""The end-to-end results as a markdown section of benchmarks/RESULTS.md and a chart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from phases import PHASE_NAMES  # noqa: E402
from report import update_results  # noqa: E402  (benchmarks/report.py: the kernel report)

SPEED_TARGET, MEMORY_TARGET = 1.3, 0.6  # prefopt/TRL tokens per second, peak memory
GiB = 1024  # MiB


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, cwd=HERE).stdout.strip()[:12]
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                               text=True, cwd=HERE).stdout.strip()
        return sha + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _label(shape: dict) -> str:
    return f"{shape['model']} T={shape['seq_len']} B={shape['pairs']}"


def _on_gpu(results: dict) -> bool:
    if "device" in results:  # written by run.py, also when every run failed
        return results["device"] == "cuda"
    return any(r.get("spec", {}).get("device") == "cuda" for r in results["runs"])


def _device_name(results: dict) -> str:
    return results.get("device_name") or next(
        (r["versions"]["device_name"] for r in results["runs"] if "versions" in r), "?")


def peak(run: dict, gpu: bool) -> float | None:
    """MiB: the allocator's peak on a GPU, the process's peak RSS on a CPU."""
    result = run.get("result")
    if result is None:
        return None
    return result["peak_mib"] if gpu else result["peak_rss_mib"]


def one_line(run: dict) -> str:
    if "error" in run:
        return f"{run['provider']:8s} {_label(run['shape'])}: FAILED: {run['error']}"
    result = run["result"]
    memory = (f"peak {result['peak_mib']:.0f} MiB" if result["peak_mib"] is not None
              else f"peak RSS {result['peak_rss_mib']:.0f} MiB")
    return (f"{run['provider']:8s} {_label(run['shape'])}: {result['step_ms']:.1f} ms/step, "
            f"{result['tokens_per_s']:,.0f} tokens/s, {memory}")


def _pairs(results: dict):
    """[(shape, prefopt run or None, trl run or None)] in run order."""
    shapes, by_key = [], {}
    for run in results["runs"]:
        key = tuple(run["shape"].values())
        if key not in by_key:
            shapes.append(run["shape"])
            by_key[key] = {}
        by_key[key][run["provider"]] = run
    return [(s, by_key[tuple(s.values())].get("prefopt"), by_key[tuple(s.values())].get("trl"))
            for s in shapes]


def same_job(mine, theirs) -> tuple[float, float] | None:
    """(relative difference of the first step's mean Σ log π(chosen), largest absolute
    difference of the per-step losses) between the two trainers' runs of a shape. Both
    start from the same weights and data, so the first is rounding (fp32 ~1e-7, bf16
    ~1e-4) and the second grows only with the rounding of the updates."""
    if not (_ok(mine) and _ok(theirs)):
        return None
    a, b = mine["result"], theirs["result"]
    if None in (a.get("first_logps_chosen"), b.get("first_logps_chosen")) \
            or not a.get("losses") or not b.get("losses"):
        return None
    first = abs(a["first_logps_chosen"] - b["first_logps_chosen"]) / abs(b["first_logps_chosen"])
    return first, max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))


def _ok(run) -> bool:
    return run is not None and "error" not in run


def _versions(results: dict) -> str:
    found: dict[str, str] = {}
    for run in results["runs"]:
        for name, value in run.get("versions", {}).items():
            if value is not None and name not in ("device_name",):
                found.setdefault(name, value)
    return ", ".join(f"{k} {v}" for k, v in found.items())


def markdown(results: dict) -> str:
    gpu = _on_gpu(results)
    device = _device_name(results)
    steps = results["steps"]
    title = ("GPU results" if gpu else
             "CPU smoke run: a harness check, not a performance figure")
    memory = ("peak = torch.cuda.max_memory_allocated over the timed steps" if gpu else
              "peak = the worker process's peak RSS")
    lines = [f"### {title}", "",
             f"- device: {device}; date: {results['date']}; commit: {results['commit']}",
             f"- {_versions(results)}",
             f"- precision {results['precision']}; gradient checkpointing "
             f"{'on' if results['gradient_checkpointing'] else 'off'}; {steps['warmup']} "
             f"warm-up, {steps['timed']} timed and {steps['profiled']} profiled steps per run",
             "- a step: B pairs, 2B sequences of T tokens (prompt T/4, completions 3T/4 ending "
             "in EOS, no padding); tokens/s = 2BT / time per step; " + memory, ""]
    if not gpu:
        lines += ["These come from a tiny model on a CPU and say nothing about speed; they "
                  "show that both trainers run the same job through the harness.", ""]
    unit = "GiB" if gpu else "MiB"
    scale = GiB if gpu else 1
    lines += [f"| model | T | B | prefopt tokens/s | TRL tokens/s | speed | prefopt peak "
              f"{unit} | TRL peak {unit} | memory | targets (≥ {SPEED_TARGET}×, "
              f"≤ {MEMORY_TARGET}×) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    by_shape = _pairs(results)
    for shape, mine, theirs in by_shape:
        cells = [shape["model"], str(shape["seq_len"]), str(shape["pairs"])]
        speed = memory_ratio = None
        for run in (mine, theirs):
            cells.append(f"{run['result']['tokens_per_s']:,.0f}" if _ok(run)
                         else (run or {}).get("error", "not run"))
        if _ok(mine) and _ok(theirs):
            speed = mine["result"]["tokens_per_s"] / theirs["result"]["tokens_per_s"]
        cells.append(f"{speed:.2f}×" if speed else "n/a")
        for run in (mine, theirs):
            value = peak(run, gpu) if _ok(run) else None
            cells.append(f"{value / scale:,.1f}" if value is not None else "n/a")
        p, t = (peak(r, gpu) if _ok(r) else None for r in (mine, theirs))
        if p is not None and t:
            memory_ratio = p / t
        cells.append(f"{memory_ratio:.2f}×" if memory_ratio else "n/a")
        if speed and memory_ratio and gpu:
            met = [speed >= SPEED_TARGET, memory_ratio <= MEMORY_TARGET]
            cells.append("both met" if all(met) else
                         " ".join(n for n, m in zip(("speed", "memory"), met) if not m)
                         + " not met")
        else:
            cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    n = steps["profiled"]
    lines += ["", f"#### Profile: ms per step by phase, prefopt / TRL (median over {n} "
              f"step{'s' * (n != 1)}, device synchronised at each phase boundary)", ""]
    pairs = [(s, m, t) for s, m, t in by_shape if _ok(m) or _ok(t)]
    lines += ["| phase | " + " | ".join(_label(s) for s, _, _ in pairs) + " |",
              "|---|" + "---:|" * len(pairs)]

    def ms(run, phase):
        return f"{run['result']['phases_ms'][phase]:.1f}" if _ok(run) and \
            run["result"]["phases_ms"] else "n/a"

    for phase in PHASE_NAMES:
        lines.append(f"| {phase} | " + " | ".join(f"{ms(m, phase)} / {ms(t, phase)}"
                                                 for _, m, t in pairs) + " |")

    def total(run):
        return f"{sum(run['result']['phases_ms'].values()):.1f}" if _ok(run) and \
            run["result"]["phases_ms"] else "n/a"

    lines.append("| **sum of phases** | " + " | ".join(f"{total(m)} / {total(t)}"
                                                      for _, m, t in pairs) + " |")
    same = [same_job(m, t) for _, m, t in pairs]
    lines.append("| same job: first Σ log π(chosen), relative difference | " + " | ".join(
        f"{s[0]:.1e}" if s else "n/a" for s in same) + " |")
    lines.append("| same job: largest loss difference over the steps | " + " | ".join(
        f"{s[1]:.1e}" if s else "n/a" for s in same) + " |")
    if gpu:
        def gib(run, key):
            value = run["result"].get(key) if _ok(run) else None
            return f"{value / GiB:.1f}" if value is not None else "n/a"

        for key, name in (("step_start_mib", "GiB allocated at step start"),
                          ("peak_mib", "GiB peak allocated"),
                          ("reserved_mib", "GiB peak reserved")):
            lines.append(f"| {name} | " + " | ".join(f"{gib(m, key)} / {gib(t, key)}"
                                                     for _, m, t in pairs) + " |")
    if results.get("kernels_file"):
        lines += ["", "The kernels that took each run's time (one more step under "
                  f"torch.profiler): `benchmarks/e2e/{results['kernels_file']}`."]
    return "\n".join(lines) + "\n"


def kernel_tables(results: dict) -> str:
    """torch.profiler's table of each run's traced step, as one markdown file ('' if none)."""
    parts = [f"# Top kernels of one traced DPO step per run ({results['date']}, commit "
             f"{results['commit']})\n"]
    for run in results["runs"]:
        table = run.get("result", {}).get("kernels")
        if table:
            parts.append(f"## {run['provider']}, {_label(run['shape'])}\n\n```text\n"
                         f"{table.rstrip()}\n```\n")
    return "\n".join(parts) if len(parts) > 1 else ""


def write(results: dict, path: Path) -> None:
    kind = "e2e-gpu" if _on_gpu(results) else "e2e-cpu-smoke"
    update_results(path, markdown(results), kind)


def chart(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = _on_gpu(results)
    pairs = _pairs(results)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    panels = [("tokens/s", lambda r: r["result"]["tokens_per_s"]),
              ("peak GiB" if gpu else "peak RSS MiB",
               lambda r: peak(r, gpu) / (GiB if gpu else 1))]
    for ax, (label, value) in zip(axes, panels):
        for i, provider in enumerate(("prefopt", "trl")):
            heights = [value(run) if _ok(run) else float("nan")
                       for run in (m if provider == "prefopt" else t for _, m, t in pairs)]
            ax.bar([k + i * 0.4 for k in range(len(pairs))], heights, 0.4,
                   label="prefopt" if provider == "prefopt" else "TRL DPOTrainer")
        ax.set_xticks([k + 0.2 for k in range(len(pairs))])
        ax.set_xticklabels([_label(s).replace(" T=", "\nT=") for s, _, _ in pairs], fontsize=7)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    device = _device_name(results)
    fig.suptitle(f"DPO step, {results['precision']}, {device}" if gpu else
                 "CPU smoke run: harness check only, NOT a performance figure")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
