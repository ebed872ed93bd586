"""One measurement's job: its settings, and what both trainers start from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from clock import StepClock
from data import random_pairs
from shapes import Shape, build_model

from prefopt.models import make_reference


@dataclass
class Spec:
    provider: str
    shape: Shape
    precision: str  # Lightning's name: bf16-mixed or 32-true
    gradient_checkpointing: bool
    warmup: int
    timed: int
    profiled: int
    seed: int = 0
    lr: float = 1e-6
    traced: bool = False  # one more step under torch.profiler: the top kernels

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare(spec: Spec):
    """(policy, reference, clock, pairs): the weights drawn from spec.seed, a frozen copy
    as the reference, the step clock with its profiler hooked onto both, and the pairs of
    every step, in order. The same for both trainers."""
    shape = spec.shape
    policy = build_model(shape.model, seed=spec.seed, device=spec.device,
                         gradient_checkpointing=spec.gradient_checkpointing)
    reference = make_reference(policy)
    clock = StepClock(spec.device, shape.tokens_per_step, warmup=spec.warmup,
                      timed=spec.timed, profiled=spec.profiled, traced=spec.traced)
    clock.profiler.attach(policy, reference)
    pairs = random_pairs(shape, policy.config.vocab_size, clock.total_steps * shape.pairs,
                         spec.seed)
    return policy, reference, clock, pairs
