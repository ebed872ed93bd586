"""Fused token log-probs, forward and forward+backward, per provider, shape and case.

Columns kept in benchmark.extra_info (read by report.py): fwd_ms and fwd_bwd_ms (medians
from CUDA events on GPU; bench_env.time_stats), fwd_stats and fwd_bwd_stats (min, median,
max ms and the number of calls timed), tflops (8 N H V flops per fwd+bwd), extra_peak_mib
(peak memory of one fwd+bwd beyond its inputs and the gradients it returns),
triton_backward (prefopt-triton: the GEMM path dh and dW took on this torch build).
pytest-benchmark's own statistics time the same fwd+bwd by wall clock with a device sync.
"""

from __future__ import annotations

import pytest
import torch
from bench_env import (
    CASES,
    CUDA,
    DTYPE,
    PROVIDERS,
    ROUNDS,
    SHAPES,
    extra_peak_mib,
    synced,
    time_stats,
)

COMBOS = [(shape, case, name) for shape in SHAPES for case in CASES for name in PROVIDERS]


def _id(combo):
    (n, h, v), case, name = combo
    return f"{name}-N{n}-H{h}-V{v}-{case}"


@pytest.mark.parametrize("shape, case, name", COMBOS, ids=[_id(c) for c in COMBOS])
def test_logprobs(benchmark, bench_env, shape, case, name):
    provider = bench_env.providers.get(name)
    if provider is None:
        pytest.skip(f"{name} is not available here")
    x = bench_env.inputs(shape, case)

    def forward():
        return provider.fn(x.hidden, x.weight, x.targets)

    def forward_backward():
        logp, entropy = forward()
        loss = (logp * x.grad_logp).sum()
        if entropy is not None:
            loss = loss + (entropy * x.grad_entropy).sum()
        return torch.autograd.grad(loss, (x.hidden, x.weight))

    n, h, v = shape
    benchmark.group = f"N{n}-H{h}-V{v}-{case}"
    out_of_memory = False
    try:
        forward_backward()  # compile / autotune outside every measurement
        extra = extra_peak_mib(forward_backward)
        fwd = time_stats(forward)
        fwd_bwd = time_stats(forward_backward)
    except torch.cuda.OutOfMemoryError:
        out_of_memory = True  # skip outside the handler: its traceback pins the tensors
    if out_of_memory:
        torch.cuda.empty_cache()
        pytest.skip(f"{name} runs out of memory at {shape}")
    if name == "prefopt-triton":
        # Which GEMM path the backward took on this torch build (and fp16 row scaling).
        from prefopt.kernels.triton_backward import LAST_BACKWARD

        benchmark.extra_info["triton_backward"] = dict(LAST_BACKWARD)
    benchmark.extra_info.update(
        provider=name, provider_version=provider.version, N=n, H=h, V=v, case=case,
        dtype=str(DTYPE).removeprefix("torch."), entropy=provider.entropy,
        mean_entropy_nats=round(x.mean_entropy, 3), fwd_ms=fwd["median_ms"],
        fwd_bwd_ms=fwd_bwd["median_ms"], fwd_stats=fwd, fwd_bwd_stats=fwd_bwd,
        tflops=8 * n * h * v / (fwd_bwd["median_ms"] * 1e-3) / 1e12, extra_peak_mib=extra,
        timer=("cuda events, L2 flushed per call" if CUDA else "cpu perf_counter")
        + ", median of >= {} calls".format(min(fwd["reps"], fwd_bwd["reps"])),
        **bench_env.versions())
    benchmark.pedantic(synced(forward_backward), rounds=ROUNDS, iterations=1)
