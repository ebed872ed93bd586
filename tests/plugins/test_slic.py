"""SLiC-HF against hand derivations, the paper's formula, and TRL's `hinge` (the
reference-based variant, scaled by 1/δ)."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.slic import SLiC
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


INPUTS = PairwiseLogps(chosen=t(-2.0, -5.0), rejected=t(-3.0, -1.0), chosen_tokens=t(4, 1),
                       rejected_tokens=t(2, 2), ref_chosen=t(-2.5, -6.0),
                       ref_rejected=t(-2.5, -1.5))


def test_matches_hand_derivation():
    # δ = 2. Margins log π(y_w) - log π(y_l): (-2 - -3, -5 - -1) = (1, -4).
    # hinge = (max(0, 2 - 1), max(0, 2 + 4)) = (1, 6) -> mean 3.5.
    # NLL per token of y_w: (2 + 5) / (4 + 1) = 1.4;  λ = 0.5: L = 3.5 + 0.7 = 4.2.
    out = SLiC(SLiC.Config(delta=2.0, nll_weight=0.5)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(4.2)
    assert out.metrics["slic/nll"].item() == pytest.approx(1.4)
    torch.testing.assert_close(out.metrics["slic/violations"], torch.ones(2))
    # A pair past the margin stops counting: δ = 0.5 -> hinge (0, 4.5), mean 2.25.
    out = SLiC(SLiC.Config(delta=0.5)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(2.25)
    torch.testing.assert_close(out.metrics["slic/violations"], torch.tensor([0.0, 1.0]))
    assert "slic/nll" not in out.metrics


def test_use_reference_hinges_on_log_ratios():
    # ρ_w = (0.5, 1), ρ_l = (-0.5, 0.5) -> margins (1, 0.5); δ = 2 -> hinge (1, 1.5).
    out = SLiC(SLiC.Config(delta=2.0, use_reference=True)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(1.25)
    assert SLiC(SLiC.Config(use_reference=True)).needs().reference
    assert not SLiC(SLiC.Config()).needs().reference


def test_matches_the_papers_formula(random_pairs):
    # max(0, δ - log P(y+|x) + log P(y-|x)) - λ log P(y_ref|x), y_ref = y_w per token.
    p = random_pairs()
    tokens = torch.arange(1, 17, dtype=torch.float64)
    delta, lam = 3.0, 0.2
    hinge = torch.clamp(delta - p["chosen"] + p["rejected"], min=0)
    expected = hinge.mean() + lam * -(p["chosen"].sum() / tokens.sum())
    out = SLiC(SLiC.Config(delta=delta, nll_weight=lam)).loss(PairwiseLogps(
        chosen=p["chosen"], rejected=p["rejected"], chosen_tokens=tokens,
        rejected_tokens=tokens))
    torch.testing.assert_close(out.loss, expected)


def test_trl_hinge_is_the_reference_variant_over_delta(random_pairs, dpo_trainer_loss):
    # TRL: relu(1 - β h) on log-ratio margins h; with β = 1/δ that is relu(δ - h) / δ.
    p = random_pairs(seed=11)
    delta = 4.0
    ours = SLiC(SLiC.Config(delta=delta, use_reference=True)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("hinge", *p.values(), beta=1 / delta)
    assert ours.loss.item() / delta == pytest.approx(trl.item(), rel=1e-12)


@pytest.mark.parametrize("field,value", [("delta", 0.0), ("nll_weight", -0.1)])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ValueError, match=f"objective.{field}"):
        SLiC(SLiC.Config(**{field: value}))


def test_conforms():
    check_objective(SLiC, "slic", configs=[SLiC.Config(), SLiC.Config(
        nll_weight=0.5, use_reference=True)])
