"""The float64 oracle and input makers shared by the kernel tests.

The oracle is deliberately the naive formula: the full [N, V] logits in float64,
torch.log_softmax, a gather, and autograd through all of it. It shares no code with
prefopt.kernels, so agreeing with it means something.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch


@dataclass
class Case:
    hidden: torch.Tensor  # [N, H], requires grad
    weight: torch.Tensor  # [V, H], requires grad
    targets: torch.Tensor  # [N] int64, some rows = ignore_index
    grad_logp: torch.Tensor  # [N] fp32 upstream gradient of logp
    grad_entropy: torch.Tensor  # [N] fp32 upstream gradient of the entropy
    ignore_index: int = -100


def make_case(n, h, v, dtype, *, seed=0, ignore_index=-100, ignore_every=5,
              logit_std=3.0) -> Case:
    """Random inputs whose logits have standard deviation ~logit_std (real LM heads give
    a few nats of spread); every `ignore_every`-th row is ignored (0: none)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen)
    weight = torch.randn(v, h, generator=gen) * (logit_std / h ** 0.5)
    targets = torch.randint(0, v, (n,), generator=gen)
    if ignore_every:
        targets[1::ignore_every] = ignore_index
    grad_logp = torch.randn(n, generator=gen)
    grad_entropy = torch.randn(n, generator=gen)
    return Case(hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_(),
                targets, grad_logp, grad_entropy, ignore_index)


def oracle(case: Case, *, temperature=1.0):
    """float64 (logp, entropy, d loss/d hidden, d loss/d weight) for
    loss = Σ grad_logp * logp + Σ grad_entropy * entropy, from the inputs' exact values."""
    h = case.hidden.detach().double().requires_grad_()
    w = case.weight.detach().double().requires_grad_()
    log_p = torch.log_softmax((h @ w.T) / temperature, dim=-1)
    valid = case.targets != case.ignore_index
    safe = torch.where(valid, case.targets, torch.zeros_like(case.targets))
    logp = torch.where(valid, log_p.gather(1, safe[:, None]).squeeze(1), 0.0)
    entropy = torch.where(valid, -(log_p.exp() * log_p).sum(-1), 0.0)
    loss = (logp * case.grad_logp.double()).sum() + (entropy * case.grad_entropy.double()).sum()
    dh, dw = torch.autograd.grad(loss, (h, w))
    return logp.detach(), entropy.detach(), dh, dw


def run_and_grad(fn, case: Case, *, with_entropy=True, **kwargs):
    """(logp, entropy, dh, dw) of fn(hidden, weight, targets, ...) under the same loss."""
    logp, entropy = fn(case.hidden, case.weight, case.targets, ignore_index=case.ignore_index,
                       with_entropy=with_entropy, **kwargs)
    loss = (logp * case.grad_logp).sum()
    if with_entropy:
        loss = loss + (entropy * case.grad_entropy).sum()
    dh, dw = torch.autograd.grad(loss, (case.hidden, case.weight))
    return logp.detach(), entropy.detach(), dh, dw


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out - ref‖ / ‖ref‖, computed in float64."""
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm()).item()


@pytest.fixture(scope="session")
def kt():
    """The helpers above, for the test modules (a conftest is not importable by them)."""
    return SimpleNamespace(Case=Case, make_case=make_case, oracle=oracle,
                           run_and_grad=run_and_grad, rel_err=rel_err)
