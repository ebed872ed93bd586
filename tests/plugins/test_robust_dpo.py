"""Robust DPO against a hand derivation, the paper's formula, and TRL's `robust` loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from prefopt.objective import PairwiseLogps
from prefopt.plugins.dpo import dpo_loss
from prefopt.plugins.robust_dpo import RobustDPO, robust_dpo_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_matches_hand_derivation():
    # ρ_w = -2 - (-2.5) = 0.5, ρ_l = -3 - (-2.5) = -0.5, β = 0.5 -> h = 0.5; ε = 0.1.
    # ℓ(h) = log(1 + e^-0.5) = 0.4740769842, ℓ(-h) = ℓ(h) + h = 0.9740769842.
    # L = (0.9 · 0.4740769842 - 0.1 · 0.9740769842) / 0.8 = 0.3292615874 / 0.8
    #   = 0.4115769842 (= ℓ(h) - ε h / (1 - 2ε) = 0.4740769842 - 0.0625).
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = RobustDPO(RobustDPO.Config(beta=0.5, label_noise=0.1)).loss(inputs)
    assert out.loss.item() == pytest.approx(0.4115769842, abs=1e-9)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.25)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.5)


def test_matches_the_papers_formula(random_pairs):
    # L̂_ε = [(1 - ε) L(y_w ≻ y_l) - ε L(y_l ≻ y_w)] / (1 - 2ε), L the DPO loss.
    p = random_pairs()
    beta, eps = 0.3, 0.2
    clean, _, _ = dpo_loss(p["chosen"], p["rejected"], p["ref_chosen"], p["ref_rejected"],
                           beta=beta)
    flipped, _, _ = dpo_loss(p["rejected"], p["chosen"], p["ref_rejected"], p["ref_chosen"],
                             beta=beta)
    expected = ((1 - eps) * clean - eps * flipped) / (1 - 2 * eps)
    got = robust_dpo_loss(p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"],
                          beta=beta, label_noise=eps)
    torch.testing.assert_close(got, expected)


def test_is_unbiased_under_label_flips(random_pairs):
    # The defining property: averaged over a label flipped with probability ε, the robust
    # loss is the clean DPO loss.
    p = random_pairs(seed=1)
    eps, beta = 0.25, 0.5
    rw, rl = p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"]
    expected = robust_dpo_loss(rw, rl, beta=beta, label_noise=0.0)
    noisy = (1 - eps) * robust_dpo_loss(rw, rl, beta=beta, label_noise=eps) \
        + eps * robust_dpo_loss(rl, rw, beta=beta, label_noise=eps)
    torch.testing.assert_close(noisy, expected)
    torch.testing.assert_close(expected, -F.logsigmoid(beta * (rw - rl)))


def test_matches_trl_robust(random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=2)
    ours = RobustDPO(RobustDPO.Config(beta=0.2, label_noise=0.3)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("robust", *p.values(), beta=0.2, label_smoothing=0.3)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_differs_from_cdpo():
    # cDPO adds ε ℓ(-h); robust DPO subtracts it and rescales: at h = 0.5, ε = 0.1,
    # cDPO = 0.9 · 0.4740769842 + 0.1 · 0.9740769842 = 0.5240769842.
    cdpo, _, _ = dpo_loss(t(-2.0), t(-3.0), t(-2.5), t(-2.5), beta=0.5, label_smoothing=0.1)
    robust = robust_dpo_loss(t(0.5), t(-0.5), beta=0.5, label_noise=0.1)
    assert cdpo.item() == pytest.approx(0.5240769842, abs=1e-9)
    assert robust.item() == pytest.approx(0.5240769842 - 0.1125, abs=1e-9)
    assert math.isclose(robust.item(), 0.4115769842, abs_tol=1e-9)


@pytest.mark.parametrize("field,value", [("beta", 0.0), ("label_noise", 0.5),
                                         ("label_noise", -0.1)])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ValueError, match=f"objective.{field}"):
        RobustDPO(RobustDPO.Config(**{field: value}))


def test_conforms():
    check_objective(RobustDPO, "robust_dpo",
                    configs=[RobustDPO.Config(), RobustDPO.Config(label_noise=0.0)])
