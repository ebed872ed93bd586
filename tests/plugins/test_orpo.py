"""ORPO against a hand derivation, the paper's odds written with probabilities, and TRL's
ORPOTrainer.odds_ratio_loss."""

import math

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.orpo import ORPO, log1mexp, log_odds_ratio
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


INPUTS = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                       rejected_tokens=t(2))


def test_matches_hand_derivation():
    # ℓ_w = -2/4 = -0.5, ℓ_l = -3/2 = -1.5.
    # log odds(y_w) = -0.5 - log(1 - e^-0.5) = -0.5 + 0.9327521296 = 0.4327521296
    # log odds(y_l) = -1.5 - log(1 - e^-1.5) = -1.5 + 0.2524824589 = -1.2475175411
    # log OR = 1.6802696706;  L_OR = log(1 + e^-1.6802696706) = 0.1708592171
    # L_SFT = 2 / 4 = 0.5;  L = 0.5 + 0.1 · 0.1708592171 = 0.5170859217
    out = ORPO(ORPO.Config(beta=0.1)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(0.5170859217, abs=1e-9)
    assert out.metrics["orpo/log_odds_ratio"].item() == pytest.approx(1.6802696706, abs=1e-9)
    assert out.metrics["orpo/nll"].item() == 0.5
    assert out.metrics["rewards/chosen"].item() == pytest.approx(-0.05)  # β ℓ_w


def test_matches_the_papers_odds(random_pairs):
    # odds(y) = P(y) / (1 - P(y)) with P(y) = exp(mean token log-prob), computed as
    # probabilities; L = the batch's per-token NLL of y_w + λ · mean(-log σ(log OR)).
    p = random_pairs()
    tokens_w = torch.arange(1, 17, dtype=torch.float64)
    tokens_l = torch.arange(16, 0, -1, dtype=torch.float64)
    prob_w, prob_l = torch.exp(p["chosen"] / tokens_w), torch.exp(p["rejected"] / tokens_l)
    log_or = torch.log((prob_w / (1 - prob_w)) / (prob_l / (1 - prob_l)))
    nll = -p["chosen"].sum() / tokens_w.sum()
    expected = nll + 0.25 * torch.log1p(torch.exp(-log_or)).mean()
    out = ORPO(ORPO.Config(beta=0.25)).loss(PairwiseLogps(
        chosen=p["chosen"], rejected=p["rejected"], chosen_tokens=tokens_w,
        rejected_tokens=tokens_l))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.metrics["orpo/log_odds_ratio"], log_or)


def test_log1mexp_is_accurate_at_both_ends():
    # log(1 - e^x) from expansions where the direct formula loses everything:
    #   x = -1e-10: log(-x (1 + x/2 + ...)) = log(1e-10) + log(1 - 5e-11) ≈ log(1e-10) - 5e-11
    #   x = -40:    log(1 - e^-40) ≈ -e^-40 (the next term, e^-80 / 2, is far below it)
    #   x = -log 2: log(1 - ½) = -log 2 exactly
    x = t(-1e-10, -math.log(2), -40.0)
    expected = t(math.log(1e-10) - 5e-11, -math.log(2), -math.exp(-40.0))
    torch.testing.assert_close(log1mexp(x), expected, rtol=1e-14, atol=0)
    naive = torch.log(1 - torch.exp(x))
    assert naive[2].item() == 0.0  # what the direct formula gives at -40


def test_probability_one_gives_a_finite_loss():
    # An empty completion (0 tokens, Σ log π = 0) or one of average token probability 1:
    # log(1 - e^0) = -inf without the cap at ℓ = -1e-6.
    inputs = PairwiseLogps(chosen=t(0.0, -1.0).requires_grad_(), rejected=t(-2.0, 0.0),
                           chosen_tokens=t(0, 2), rejected_tokens=t(3, 0))
    out = ORPO(ORPO.Config()).loss(inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(inputs.chosen.grad).all()
    assert torch.isfinite(log_odds_ratio(t(0.0), t(0.0))).all()


def test_matches_trl(random_pairs, trl_method):
    # TRL's odds_ratio_loss returns λ log σ(log OR) (to subtract) for length-averaged
    # log-probs; its total is NLL - mean of that.
    p = random_pairs(seed=9)
    tokens = torch.full((16,), 8.0, dtype=torch.float64)
    odds_ratio_loss = trl_method("trl.experimental.orpo.orpo_trainer", "ORPOTrainer",
                                 "odds_ratio_loss", beta=0.1)
    trl_losses, *_ = odds_ratio_loss(p["chosen"] / 8, p["rejected"] / 8)
    nll = -p["chosen"].sum() / tokens.sum()
    ours = ORPO(ORPO.Config(beta=0.1)).loss(PairwiseLogps(
        chosen=p["chosen"], rejected=p["rejected"], chosen_tokens=tokens,
        rejected_tokens=tokens))
    # TRL casts to float32 first.
    assert ours.loss.item() == pytest.approx((nll - trl_losses.mean()).item(), rel=1e-6)
    assert (ours.loss - nll).item() == pytest.approx(-trl_losses.mean().item(), rel=1e-6)


def test_needs_no_reference_and_refuses_a_zero_weight():
    assert ORPO(ORPO.Config()).needs().reference is False
    with pytest.raises(ValueError, match="objective.beta"):
        ORPO(ORPO.Config(beta=0.0))


def test_conforms():
    check_objective(ORPO, "orpo")
