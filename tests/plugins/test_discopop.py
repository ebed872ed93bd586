"""DiscoPOP against a hand derivation, the paper's formula, and TRL's `discopop`, which
gives NaN where the exponential overflows."""

import math

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.discopop import DiscoPOP, discopop_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_matches_hand_derivation():
    # β = 0.5, h = 1 -> ρ = 0.5; τ = 0.05 -> σ(ρ/τ) = σ(10) = 0.9999546021.
    # L = 4.5397868702e-5 · log(1 + e^-0.5) + 0.9999546021 · e^-0.5
    #   = 4.5397868702e-5 · 0.4740769842 + 0.9999546021 · 0.6065306597 = 0.6065246466
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = DiscoPOP(DiscoPOP.Config(beta=0.5, tau=0.05)).loss(inputs)
    assert out.loss.item() == pytest.approx(0.6065246466, abs=1e-9)


def test_matches_the_papers_formula(random_pairs):
    # f(ρ) = (1 - σ(ρ/τ)) · (-log σ(ρ)) + σ(ρ/τ) · e^-ρ, written plainly.
    p = random_pairs()
    beta, tau = 0.05, 0.1
    rho = beta * ((p["chosen"] - p["ref_chosen"]) - (p["rejected"] - p["ref_rejected"]))
    mix = torch.sigmoid(rho / tau)
    expected = (1 - mix) * -torch.log(torch.sigmoid(rho)) + mix * torch.exp(-rho)
    got = discopop_loss(p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"],
                        beta=beta, tau=tau)
    torch.testing.assert_close(got, expected)


def test_matches_trl_discopop(random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=7)
    ours = DiscoPOP(DiscoPOP.Config(beta=0.1, tau=0.2)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("discopop", *p.values(), beta=0.1, discopop_tau=0.2)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_stays_finite_where_trl_overflows(dpo_trainer_loss):
    # A pair far on the wrong side, in float32: ρ = -100, e^100 overflows to inf and
    # σ(ρ/τ) = σ(-2000) underflows to 0, so TRL's product is 0 · inf = NaN. The limit is
    # DPO's loss, -log σ(-100) = 100.
    f32 = lambda v: torch.tensor([v], dtype=torch.float32)  # noqa: E731
    ours = discopop_loss(f32(-100.0), f32(0.0), beta=1.0, tau=0.05)
    assert ours.item() == pytest.approx(100.0)
    assert torch.isfinite(ours).all()
    trl = dpo_trainer_loss("discopop", f32(-100.0), f32(0.0), f32(0.0), f32(0.0), beta=1.0)
    assert math.isnan(trl.item())
    chosen = f32(-100.0).requires_grad_()
    discopop_loss(chosen, f32(0.0), beta=1.0, tau=0.05).sum().backward()
    assert chosen.grad.item() == pytest.approx(-torch.sigmoid(f32(100.0)).item())


def test_conforms():
    check_objective(DiscoPOP, "discopop")
