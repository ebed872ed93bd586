"""Step timing, peak memory and per-step losses of one benchmark run, for any trainer.

The trainer's callbacks call `step_start()` and `step_end(...)`. Steps run in runs of
`warmup`, `timed` and `profiled` steps, and with `traced` one more: warm-up steps
(allocator, autotuning, cuDNN choices) are not counted; the timed steps give the time per
step as the interval between the end of the last warm-up step and the end of the last
timed step, so data loading and everything between steps count; the profiled steps run
with the phase profiler's device synchronisations and are timed only phase by phase; the
traced step runs under torch.profiler, for a table of the kernels that took the time.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field

import torch
from phases import StepProfiler, synchronized_time

MiB = 2**20


@dataclass
class Measurement:
    step_ms: float
    tokens_per_s: float
    peak_mib: float | None  # torch.cuda.max_memory_allocated over the timed steps
    reserved_mib: float | None  # the allocator's peak reserve over the timed steps
    step_start_mib: float | None  # allocated at a timed step's start: weights, optimizer
    # state, the reference, and any gradients still held from the step before
    peak_rss_mib: float  # the process's peak resident memory (the CPU smoke test's figure)
    phases_ms: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # per step, from the trainer's log
    first_logps_chosen: float | None = None  # mean Σ log π(chosen) at the first step
    kernels: str | None = None  # torch.profiler's table of the traced step's top kernels


class StepClock:
    def __init__(self, device: torch.device, tokens_per_step: int, *, warmup: int, timed: int,
                 profiled: int, traced: bool = False):
        if warmup < 1 or timed < 1 or profiled < 0:
            raise ValueError("need warmup >= 1, timed >= 1 and profiled >= 0 steps, got "
                             f"{warmup}, {timed}, {profiled}")
        self.device, self.tokens_per_step = device, tokens_per_step
        self.warmup, self.timed, self.profiled, self.traced = warmup, timed, profiled, traced
        self.profiler = StepProfiler(device)
        self.step = 0
        self.losses: list[float] = []
        self.first_logps_chosen: float | None = None
        self._start = self._end = None
        self._peak = self._reserved = self._step_start = None
        self._trace = self._kernels = None

    @property
    def total_steps(self) -> int:
        return self.warmup + self.timed + self.profiled + int(self.traced)

    def step_start(self) -> None:
        if self.step == self.warmup and self.device.type == "cuda":
            self._step_start = torch.cuda.memory_allocated(self.device) / MiB
        if self.traced and self.step == self.total_steps - 1:
            self._trace = self._start_trace()
        elif self.step >= self.warmup + self.timed:
            self.profiler.begin_step()

    def step_end(self) -> None:
        self.profiler.end_step()
        if self._trace is not None:
            self._kernels = self._end_trace(self._trace)
            self._trace = None
        if self.step == self.warmup - 1:
            self._start = synchronized_time(self.device)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
        elif self.step == self.warmup + self.timed - 1:
            self._end = synchronized_time(self.device)
            if self.device.type == "cuda":
                self._peak = torch.cuda.max_memory_allocated(self.device) / MiB
                self._reserved = torch.cuda.max_memory_reserved(self.device) / MiB
        self.step += 1

    def _start_trace(self):
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        trace = torch.profiler.profile(activities=activities)
        trace.__enter__()
        return trace

    def _end_trace(self, trace) -> str:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        trace.__exit__(None, None, None)
        key = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        return trace.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)

    def record(self, loss: float, logps_chosen: float | None) -> None:
        """The trainer's logged values of the step that just ended."""
        self.losses.append(loss)
        if self.first_logps_chosen is None and logps_chosen is not None:
            self.first_logps_chosen = logps_chosen

    def result(self) -> Measurement:
        if self._end is None:
            raise RuntimeError(f"the run stopped after {self.step} of {self.total_steps} steps")
        step_ms = (self._end - self._start) * 1e3 / self.timed
        return Measurement(
            step_ms=step_ms, tokens_per_s=self.tokens_per_step / (step_ms / 1e3),
            peak_mib=self._peak, reserved_mib=self._reserved, step_start_mib=self._step_start,
            # ru_maxrss is in KiB on Linux.
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            phases_ms=self.profiler.summary(), losses=self.losses,
            first_logps_chosen=self.first_logps_chosen, kernels=self._kernels)
