"""Benchmark environment: device, shapes, timing and memory measurement.

On CUDA: the issue's shapes in bf16, times from triton.testing.do_bench (CUDA events,
warm-up, median). Without CUDA: a seconds-long smoke test of the harness at tiny shapes
(torch providers; prefopt-triton only if this process's triton is interpreting), whose
numbers are no performance figure.
"""

from __future__ import annotations

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


def time_ms(fn) -> float:
    """Median milliseconds of fn()."""
    if CUDA:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


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
