"""Run one (provider, shape) measurement in this process and write it as JSON.

    python benchmarks/e2e/worker.py --provider prefopt --model qwen2-0.5b --seq-len 1024 \
        --pairs 4 --out result.json

run.py starts one such process per measurement, so that each starts with an empty GPU
and its peak memory is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from job import Spec  # noqa: E402
from shapes import MODELS, Shape  # noqa: E402

PROVIDERS = ("prefopt", "trl")


def parse(argv=None) -> tuple[Spec, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=PROVIDERS, required=True)
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--precision", choices=("bf16-mixed", "32-true"), default="bf16-mixed")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=6)
    parser.add_argument("--profiled", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--trace", action="store_true",
                        help="one more step under torch.profiler: a table of the top kernels")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = Spec(args.provider, Shape(args.model, args.seq_len, args.pairs), args.precision,
                args.gradient_checkpointing, args.warmup, args.timed, args.profiled, args.seed,
                args.lr, args.trace)
    return spec, args.out


def measure(spec: Spec) -> dict:
    if spec.provider == "prefopt":
        from run_prefopt import run
    else:
        from run_trl import run
    clock = run(spec)
    return {"spec": {**dataclasses.asdict(spec), "device": spec.device.type},
            "result": dataclasses.asdict(clock.result()), "versions": versions(spec.provider)}


def versions(provider: str) -> dict:
    from importlib.metadata import version

    names = ["torch", "transformers", "pytorch-lightning", "triton", "accelerate"]
    names += ["prefopt"] if provider == "prefopt" else ["trl"]
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:  # not installed: the table says so
            found[name] = None
    found["cuda"] = torch.version.cuda
    found["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return found


def main(argv=None) -> None:
    spec, out = parse(argv)
    payload = measure(spec)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, out)  # a killed worker leaves no half-written result


if __name__ == "__main__":
    main()
