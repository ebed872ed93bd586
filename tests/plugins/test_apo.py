"""APO (zero and down) against hand derivations, the paper's formulas, and TRL."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.apo import APO, Variant, apo_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


INPUTS = dict(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4), rejected_tokens=t(2),
              ref_chosen=t(-2.5), ref_rejected=t(-2.5))


@pytest.mark.parametrize("variant,expected", [
    # β = 0.5: r_w = 0.25, r_l = -0.25.
    # zero: (1 - σ(0.25)) + σ(-0.25) = 2 σ(-0.25) = 2 · 0.4378234991 = 0.8756469982
    ("zero", 0.8756469982),
    # down: σ(0.25) + (1 - σ(0.25 - -0.25)) = 0.5621765009 + 1 - 0.6224593312 = 0.9397171697
    ("down", 0.9397171697),
])
def test_matches_hand_derivation(variant, expected):
    out = APO(APO.Config(beta=0.5, variant=Variant(variant))).loss(PairwiseLogps(**INPUTS))
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)


def test_matches_the_papers_formulas(random_pairs):
    p = random_pairs()
    beta = 0.2
    rw, rl = p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"]
    sig = lambda z: 1 / (1 + torch.exp(-z))  # noqa: E731
    torch.testing.assert_close(apo_loss(rw, rl, beta=beta, variant=Variant.zero),
                               1 - sig(beta * rw) + sig(beta * rl))
    torch.testing.assert_close(apo_loss(rw, rl, beta=beta, variant=Variant.down),
                               sig(beta * rw) + 1 - sig(beta * rw - beta * rl))


def test_variants_move_the_chosen_likelihood_opposite_ways():
    # r_w = 0, r_l = -2. zero: dL/dr_w = -σ'(0) = -0.25, raising log π(y_w); down:
    # dL/dr_w = σ'(0) - σ'(2) = 0.25 - 0.1049935854 > 0, lowering it.
    for variant, grad in ((Variant.zero, -0.25), (Variant.down, 0.25 - 0.1049935854)):
        chosen = t(0.0).requires_grad_()
        apo_loss(chosen, t(-2.0), beta=1.0, variant=variant).sum().backward()
        assert chosen.grad.item() == pytest.approx(grad, abs=1e-9)


@pytest.mark.parametrize("variant", ["zero", "down"])
def test_matches_trl(variant, random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=4)
    ours = APO(APO.Config(beta=0.3, variant=Variant(variant))).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss(f"apo_{variant}", *p.values(), beta=0.3)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_conforms():
    check_objective(APO, "apo", configs=[APO.Config(), APO.Config(variant=Variant.down)])
