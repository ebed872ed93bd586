"""End-to-end DPO step, prefopt against TRL's DPOTrainer: tokens/s, peak memory, profile.

    python benchmarks/e2e/run.py                     # what `make bench-e2e` runs
    python benchmarks/e2e/run.py --models qwen2-0.5b --seq-lens 1024 --pairs 4 8

On a GPU: the issue's eight shapes (Qwen2-0.5B- and Llama-3.2-1B-shaped models, sequence
length 1024 and 2048, 4 and 8 pairs per micro-batch) in bf16 mixed precision, each
provider in its own process, one after the other on the same GPU; the table and chart go
to benchmarks/RESULTS.md and benchmarks/e2e/e2e.png. On a CPU: a seconds-long smoke run
of the same harness on a tiny model, whose figures measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import e2e_report  # noqa: E402
import torch  # noqa: E402
from shapes import CPU_SHAPES, GPU_SHAPES, MODELS, Shape  # noqa: E402
from worker import PROVIDERS  # noqa: E402


def parse(argv=None):
    gpu = torch.cuda.is_available()
    defaults = GPU_SHAPES if gpu else CPU_SHAPES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS),
                        default=sorted({s.model for s in defaults}))
    parser.add_argument("--seq-lens", nargs="+", type=int,
                        default=sorted({s.seq_len for s in defaults}))
    parser.add_argument("--pairs", nargs="+", type=int,
                        default=sorted({s.pairs for s in defaults}))
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--precision", choices=("bf16-mixed", "32-true"),
                        default="bf16-mixed" if gpu else "32-true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=2 if gpu else 1)
    parser.add_argument("--timed", type=int, default=6 if gpu else 2)
    parser.add_argument("--profiled", type=int, default=2 if gpu else 1)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=gpu,
                        help="one more step per run under torch.profiler, its top kernels "
                             "into <out>-kernels.md (default: on a GPU)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds one measurement may take before it is stopped")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: benchmarks/e2e/results.json on a GPU, "
                             "results-cpu-smoke.json on a CPU)")
    parser.add_argument("--results", type=Path, default=HERE.parent / "RESULTS.md",
                        help="markdown file whose e2e section is replaced ('-': none)")
    parser.add_argument("--png", type=Path, default=None,
                        help="chart (default: benchmarks/e2e/e2e.png on a GPU; none on a CPU)")
    args = parser.parse_args(argv)
    name = "results.json" if gpu else "results-cpu-smoke.json"
    args.out = args.out or HERE / name
    if args.png is None and gpu:
        args.png = HERE / "e2e.png"
    return args


def measure(shape: Shape, provider: str, args, workdir: Path) -> dict:
    """One worker process; its JSON, or the reason it gave none."""
    out = workdir / f"{provider}-{shape.model}-{shape.seq_len}-{shape.pairs}.json"
    command = [sys.executable, str(HERE / "worker.py"), "--provider", provider,
               "--model", shape.model, "--seq-len", str(shape.seq_len),
               "--pairs", str(shape.pairs), "--precision", args.precision,
               "--warmup", str(args.warmup), "--timed", str(args.timed),
               "--profiled", str(args.profiled), "--lr", str(args.lr), "--out", str(out)]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    if args.trace:
        command.append("--trace")
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    except subprocess.TimeoutExpired:
        return {"provider": provider, "shape": vars(shape),
                "error": f"stopped after {args.timeout:.0f} s (--timeout)"}
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out.exists():
        log = out.with_suffix(".log")
        log.write_text(proc.stdout + proc.stderr)
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-3:]
        oom = "out of memory" in proc.stderr.lower()
        return {"provider": provider, "shape": vars(shape), "log": str(log),
                "error": "out of GPU memory" if oom else " / ".join(tail) or
                f"exit status {proc.returncode}"}
    payload = json.loads(out.read_text())
    payload.update(provider=provider, shape=vars(shape), wall_s=wall)
    return payload


def main(argv=None) -> int:
    args = parse(argv)
    shapes = [Shape(m, t, b) for m in args.models for t in args.seq_lens for b in args.pairs]
    workdir = args.out.parent / "runs"
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for i, shape in enumerate(shapes):
        # Alternating which trainer goes first, so that neither always meets a GPU warmed
        # (or heated) by the other.
        for provider in args.providers if i % 2 == 0 else args.providers[::-1]:
            run = measure(shape, provider, args, workdir)
            runs.append(run)
            print(e2e_report.one_line(run), flush=True)
    cuda = torch.cuda.is_available()
    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "device": "cuda" if cuda else "cpu",
               "device_name": torch.cuda.get_device_name() if cuda else "cpu",
               "commit": e2e_report.commit(), "precision": args.precision,
               "gradient_checkpointing": args.gradient_checkpointing,
               "steps": {"warmup": args.warmup, "timed": args.timed,
                         "profiled": args.profiled, "traced": int(args.trace)},
               "runs": runs}
    kernels = e2e_report.kernel_tables(results)
    if kernels:
        results["kernels_file"] = args.out.stem + "-kernels.md"
        (args.out.parent / results["kernels_file"]).write_text(kernels)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if str(args.results) != "-":
        e2e_report.write(results, args.results)
    if args.png is not None:
        e2e_report.chart(results, args.png)
    print(f"wrote {args.out}" + (f", {args.results}" if str(args.results) != "-" else "")
          + (f", {args.png}" if args.png else ""))
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
