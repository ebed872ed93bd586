"""NCA (pairwise) against a hand derivation, the paper's formula, and TRL's `nca_pair`."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.nca import NCA, nca_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_matches_hand_derivation():
    # β = 0.5: r_w = 0.5 · (-2 - -2.5) = 0.25, r_l = 0.5 · (-3 - -2.5) = -0.25.
    # -log σ(0.25) = log(1 + e^-0.25) = 0.5759394199;  -log σ(-0.25) = 0.8259394199.
    # L = 0.5759394199 + ½ · 0.8259394199 + ½ · 0.5759394199 = 1.2768788398.
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = NCA(NCA.Config(beta=0.5)).loss(inputs)
    assert out.loss.item() == pytest.approx(1.2768788398, abs=1e-9)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.25)


def test_matches_the_papers_formula(random_pairs):
    # NCA, K = 2: L = -log σ(r_w) - ½ Σ_{y ∈ {y_w, y_l}} log σ(-r_y), written with
    # σ(r) = 1 / (1 + e^-r) directly.
    p = random_pairs()
    beta = 0.1
    rw = beta * (p["chosen"] - p["ref_chosen"])
    rl = beta * (p["rejected"] - p["ref_rejected"])
    sig = lambda z: 1 / (1 + torch.exp(-z))  # noqa: E731
    expected = -torch.log(sig(rw)) - 0.5 * (torch.log(sig(-rw)) + torch.log(sig(-rl)))
    got = nca_loss(p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"], beta=beta)
    torch.testing.assert_close(got, expected)


def test_raises_the_chosen_likelihood_even_when_the_margin_is_won():
    # DPO's gradient on log π(y_w) only depends on the margin; NCA's chosen term keeps a
    # push up: dL/dr_w = -σ(-r_w) + ½ σ(r_w) < 0 for r_w < log 2.
    chosen = t(0.0).requires_grad_()
    nca_loss(chosen, t(-50.0), beta=1.0).sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5 + 0.25)


def test_matches_trl_nca_pair(random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=3)
    ours = NCA(NCA.Config(beta=0.3)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("nca_pair", *p.values(), beta=0.3)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_conforms():
    check_objective(NCA, "nca")
