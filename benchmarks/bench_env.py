"""Benchmark environment: device, shapes, timing and memory measurement.

On CUDA: the issue's shapes in bf16, times from CUDA events (warm-up, L2 flushed before
every call, at least 25 calls and one second per measurement; min / median / max).
Without CUDA: a seconds-long smoke test of the harness at tiny shapes (torch providers;
prefopt-triton only if this process's triton is interpreting), whose numbers are no
performance figure.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from bench_data import make_inputs
from bench_providers import available_providers

CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16
CASES = ("random", "peaked")
PROVIDERS = ("prefopt-triton", "torch-eager", "torch-compile-chunked", "liger", "cce")
if CUDA:
    SHAPES = ((8192, 4096, 128256), (16384, 2048, 151936))  # (N, H, V)
    COMPILE_CHUNK = 2048
    ROUNDS = 5  # pytest-benchmark rounds of fwd+bwd, beside do_bench's own medians
else:
    SHAPES = ((96, 32, 257),)
    COMPILE_CHUNK = 32  # several chunks even at the smoke shape
    ROUNDS = 2
MiB = 2**20


def _triton_runs_here() -> bool:
    try:
        import triton.language.standard as standard
    except ImportError:
        return False
    if CUDA:
        return True
    # On the CPU only the interpreter runs Triton, and only if triton itself was
    # imported with TRITON_INTERPRET=1 (its tl.* helpers are decorated at import).
    return type(standard.cdiv).__name__ == "InterpretedFunction"


# Repetitions of every timed call: at least MIN_REPS and at least MIN_TOTAL_MS of them in
# all, after a warm-up. (do_bench(rep=100), before, ran int(100 / estimate) of them: one
# for a 55 ms fwd+bwd, whose "median" was then a single sample.)
GPU_MIN_REPS, GPU_MIN_TOTAL_MS = 25, 1000.0
MIN_REPS = GPU_MIN_REPS if CUDA else 3
MIN_TOTAL_MS = GPU_MIN_TOTAL_MS if CUDA else 0.0
WARMUP_REPS = 3 if CUDA else 0
_L2_FLUSH_BYTES = 256 * MiB  # do_bench's choice: more than any GPU's L2


def reps_for(estimate_ms: float, min_reps: int = MIN_REPS,
             min_total_ms: float = MIN_TOTAL_MS) -> int:
    """How many timed repetitions a call of about estimate_ms gets."""
    if estimate_ms <= 0:
        return min_reps
    return max(min_reps, math.ceil(min_total_ms / estimate_ms))


def summarize(times_ms) -> dict:
    times = sorted(float(t) for t in times_ms)
    return {"min_ms": times[0], "median_ms": statistics.median(times), "max_ms": times[-1],
            "reps": len(times)}


def time_stats(fn) -> dict:
    """min / median / max milliseconds of fn() over reps_for(its first time) calls.

    CUDA: one pair of CUDA events per call, the L2 cache flushed before each (as
    triton.testing.do_bench does). CPU: perf_counter per call.
    """
    if not CUDA:
        first = _wall_ms(fn)
        return summarize([first] + [_wall_ms(fn) for _ in range(reps_for(first) - 1)])
    flush = torch.empty(_L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    for _ in range(WARMUP_REPS):
        fn()
    torch.cuda.synchronize()
    estimate = _cuda_ms(fn, flush, 1)[0]
    return summarize(_cuda_ms(fn, flush, reps_for(estimate)))


def _wall_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _cuda_ms(fn, flush, reps) -> list[float]:
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends)]


def extra_peak_mib(step) -> float | None:
    """Peak memory of step() beyond what was allocated before it and the tensors it returns
    (the gradient outputs). None without CUDA."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outputs = step()
    torch.cuda.synchronize()
    kept = sum(t.numel() * t.element_size() for t in outputs if t is not None)
    return (torch.cuda.max_memory_allocated() - base - kept) / MiB


def synced(fn):
    """fn followed by a device synchronisation, for wall-clock timing by pytest-benchmark."""
    def run():
        out = fn()
        if CUDA:
            torch.cuda.synchronize()
        return out
    return run


class BenchEnv:
    def __init__(self):
        self.device = torch.device("cuda" if CUDA else "cpu")
        self.providers = available_providers(self.device, _triton_runs_here(), COMPILE_CHUNK)
        self.device_name = torch.cuda.get_device_name() if CUDA else "cpu (smoke test)"
        self._key, self._inputs = None, None

    def inputs(self, shape, case):
        """Inputs of (shape, case); one set is kept alive at a time (GPU memory)."""
        if self._key != (shape, case):
            self._inputs = None
            if CUDA:
                torch.cuda.empty_cache()
            self._inputs = make_inputs(*shape, DTYPE, self.device, case)
            self._key = (shape, case)
        return self._inputs

    def versions(self) -> dict:
        import triton

        interpreted = "prefopt-triton" in self.providers and not CUDA
        return {"torch": torch.__version__, "triton": triton.__version__,
                "triton_mode": "interpreter" if interpreted else "compiled",
                "cuda": torch.version.cuda, "device": self.device_name}
