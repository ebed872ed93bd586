"""SPPO (hard labels) against a hand derivation, the paper's formula, and TRL's
`sppo_hard`."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.sppo import SPPO, sppo_hard_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_matches_hand_derivation():
    # β = 0.5 -> targets ±1/(2β) = ±1.  ρ_w = 0.5, ρ_l = -0.5.
    # L = (0.5 - 1)² + (-0.5 + 1)² = 0.25 + 0.25 = 0.5.
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = SPPO(SPPO.Config(beta=0.5)).loss(inputs)
    assert out.loss.item() == 0.5
    assert out.metrics["sppo/target"].item() == 1.0


def test_matches_the_papers_formula(random_pairs):
    # (log π/π_t - η (P - ½))² summed over the pair, P = 1 for y_w and 0 for y_l, η = 1/β.
    p = random_pairs()
    beta = 0.25
    eta = 1 / beta
    expected = (p["chosen"] - p["ref_chosen"] - eta * (1 - 0.5)) ** 2 \
        + (p["rejected"] - p["ref_rejected"] - eta * (0 - 0.5)) ** 2
    got = sppo_hard_loss(p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"],
                         beta=beta)
    torch.testing.assert_close(got, expected)


def test_each_log_ratio_is_pulled_to_its_own_target():
    # Shifting both log-ratios by the same amount keeps the margin (IPO would not move)
    # but changes SPPO's loss: (1 + 1 - 1)² + (-1 + 1 + 1)² = 2 at a shift of 1.
    assert sppo_hard_loss(t(1.0), t(-1.0), beta=0.5).item() == 0.0
    assert sppo_hard_loss(t(2.0), t(0.0), beta=0.5).item() == 2.0


def test_matches_trl_sppo_hard(random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=5)
    ours = SPPO(SPPO.Config(beta=0.3)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("sppo_hard", *p.values(), beta=0.3)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_conforms():
    check_objective(SPPO, "sppo")
