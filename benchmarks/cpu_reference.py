"""The torch path of prefopt.kernels (every CPU user's path) against torch eager, on the CPU.

    python benchmarks/cpu_reference.py [--shape N H V] [--dtype float32] [--reps 5]
                                       [--json PATH]

Both compute logp and entropy of one batch, forward and backward (random per-token
upstream gradients of both), from the same inputs:

- prefopt-torch: token_logprobs(..., impl="torch"), the chunked reference (reference.py);
- torch-eager: fp32 logits, log_softmax, gather, entropy, autograd (bench_providers.py).

Time: wall clock of fwd+bwd, the two providers interleaved in one process (one warm-up
call each first), min / median / max over --reps calls each; the ratio is of medians.
Peak memory: the torch CPU allocator as torch.profiler sees it (profile_memory=True):
the highest "Total Allocated" of its memory events during one fwd+bwd, i.e. bytes
allocated by the step beyond what existed before it, gradients dh and dW included.
tracemalloc does not see torch's allocations, and RSS would include the allocator's and
the runtime's own pools.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_providers import torch_eager  # noqa: E402

MiB = 2**20
DEFAULT_SHAPE = (2048, 512, 32000)


def prefopt_torch(hidden, weight, targets):
    from prefopt.kernels import token_logprobs

    return token_logprobs(hidden, weight, targets, return_entropy=True, impl="torch")


PROVIDERS = {"prefopt-torch": prefopt_torch, "torch-eager": torch_eager}


def make_inputs(n, h, v, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * (3.0 / h ** 0.5)).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    grads = torch.randn(2, n, generator=gen)
    return hidden, weight, targets, grads


def fwd_bwd(fn, inputs):
    hidden, weight, targets, grads = inputs
    logp, entropy = fn(hidden, weight, targets)
    loss = (logp * grads[0]).sum() + (entropy * grads[1]).sum()
    return torch.autograd.grad(loss, (hidden, weight))


def peak_mib(step) -> float:
    """Peak bytes the torch CPU allocator held for step() beyond what it held before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = step()
    del out
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    memory = [e["args"] for e in events if e.get("name") == "[memory]"
              and e.get("args", {}).get("Device Type") == 0]
    if not memory:
        return 0.0
    # The profiler's running total carries over from earlier profiles in the process (frees
    # made outside a profile are not seen): count from the value before the first event.
    before = memory[0]["Total Allocated"] - memory[0]["Bytes"]
    return max(0, *(m["Total Allocated"] - before for m in memory)) / MiB


def measure(shape, dtype, reps, providers=tuple(PROVIDERS)) -> dict:
    inputs = make_inputs(*shape, dtype)
    steps = {name: (lambda fn=PROVIDERS[name]: fwd_bwd(fn, inputs)) for name in providers}
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(reps):  # interleaved: both see the same machine load
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name, step in steps.items():
        ts = times[name]
        rows[name] = {"min_s": min(ts), "median_s": statistics.median(ts), "max_s": max(ts),
                      "reps": len(ts), "peak_mib": peak_mib(step)}
    return {"N": shape[0], "H": shape[1], "V": shape[2],
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "providers": rows}


def markdown(result: dict) -> str:
    eager = result["providers"].get("torch-eager")
    lines = [f"N={result['N']} H={result['H']} V={result['V']} {result['dtype']}, "
             f"torch {result['torch']}, {result['threads']} threads",
             "",
             "| provider | fwd+bwd s (min / median / max) | vs eager | peak MiB | vs eager |",
             "|---|---|---:|---:|---:|"]
    for name, r in result["providers"].items():
        speed = mem = ""
        if eager:
            speed = f"{eager['median_s'] / r['median_s']:.2f}x faster"
            mem = f"{r['peak_mib'] / eager['peak_mib']:.2f}x"
        lines.append(f"| {name} | {r['min_s']:.3f} / {r['median_s']:.3f} / {r['max_s']:.3f} "
                     f"| {speed} | {r['peak_mib']:.0f} | {mem} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE,
                        metavar=("N", "H", "V"))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    result = measure(tuple(args.shape), getattr(torch, args.dtype), args.reps)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
