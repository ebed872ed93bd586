"""IPO loss against values derived by hand."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.ipo import IPO, ipo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_ipo_matches_hand_derivation():
    # τ = 0.5 -> target margin 1/(2τ) = 1.
    # Per-token log-probs: π(y_w) = -2/4 = -0.5, π_ref(y_w) = -2.5/4 = -0.625 -> +0.125
    #                      π(y_l) = -3/2 = -1.5, π_ref(y_l) = -2.5/2 = -1.25  -> -0.25
    # h = 0.125 + 0.25 = 0.375;  L = (0.375 - 1)² = 0.390625 exactly.
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = IPO(IPO.Config(beta=0.5)).loss(inputs)
    assert out.loss.item() == 0.390625
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.0625)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.125)
    assert out.metrics["ipo/target_margin"].item() == 1.0


def test_ipo_at_reference_is_square_of_target():
    # policy == reference: h = 0, L = (1/(2 · 0.1))² = 25.
    logps = t(-1.0, -4.0)
    losses, _, _ = ipo_loss(logps, logps, logps, logps, tau=0.1)
    torch.testing.assert_close(losses, t(25.0, 25.0))


def test_ipo_gradient_pulls_margin_to_target():
    # dL/dh = 2 (h - 1/(2τ)): below target the chosen log-prob is pushed up, above it down.
    for chosen_value, sign in ((0.0, -1.0), (3.0, 1.0)):
        chosen = t(chosen_value).requires_grad_()
        losses, _, _ = ipo_loss(chosen, t(0.0), t(0.0), t(0.0), tau=0.5)
        losses.sum().backward()
        assert chosen.grad.item() == pytest.approx(2 * (chosen_value - 1.0))
        assert torch.sign(chosen.grad).item() == sign


def test_ipo_always_needs_reference():
    assert IPO(IPO.Config()).needs().reference
