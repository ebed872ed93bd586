"""Benchmark inputs: "random" (near-uniform next-token distributions) and "peaked"
(entropy of 1-3 nats per token, like a trained LM, with targets drawn from the model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

PEAKED_ENTROPY = 2.0  # nats, mean over tokens
_CALIBRATION_ROWS = 256
_SAMPLING_ROWS = 1024


@dataclass
class Inputs:
    hidden: torch.Tensor  # [N, H], requires grad
    weight: torch.Tensor  # [V, H], requires grad
    targets: torch.Tensor  # [N] int64
    grad_logp: torch.Tensor  # [N] fp32, random per-token upstream gradient
    grad_entropy: torch.Tensor  # [N] fp32
    mean_entropy: float  # nats, measured on a sample of rows

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.hidden, self.weight, self.targets, self.grad_logp, self.grad_entropy))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def _logit_scale_for(hidden, direction, target_entropy):
    """Scale s with mean entropy of softmax(s * h W^T) = target_entropy, on a row sample.

    The entropy falls monotonically from log V (s = 0) towards 0 (s large): bisect log s.
    """
    base = hidden[:_CALIBRATION_ROWS].float() @ direction.float().T
    lo, hi = 1e-2, 1e3
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        if _entropy(mid * base).mean().item() > target_entropy:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def make_inputs(n, h, v, dtype, device, case, seed=0) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(n, h, device=device, generator=gen)
    direction = torch.randn(v, h, device=device, generator=gen) / h ** 0.5
    if case == "random":
        weight = direction.to(dtype)  # logits ~ N(0, 1): entropy close to log V
        targets = torch.randint(0, v, (n,), device=device, generator=gen)
    elif case == "peaked":
        scale = _logit_scale_for(hidden, direction, PEAKED_ENTROPY)
        weight = (direction * scale).to(dtype)
        targets = torch.empty(n, dtype=torch.long, device=device)
        hidden_q = hidden.to(dtype)
        for i in range(0, n, _SAMPLING_ROWS):  # targets drawn from the model itself
            probs = torch.softmax((hidden_q[i:i + _SAMPLING_ROWS] @ weight.T).float(), -1)
            targets[i:i + _SAMPLING_ROWS] = torch.multinomial(probs, 1, generator=gen)[:, 0]
            del probs
    else:
        raise ValueError(f"unknown case {case!r}")
    del direction
    hidden = hidden.to(dtype)
    mean_entropy = _entropy(hidden[:_CALIBRATION_ROWS] @ weight.T).mean().item()
    return Inputs(hidden.requires_grad_(), weight.requires_grad_(), targets,
                  torch.randn(n, device=device, generator=gen),
                  torch.randn(n, device=device, generator=gen), mean_entropy)
