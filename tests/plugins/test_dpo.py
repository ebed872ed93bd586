"""DPO and cDPO losses against values derived by hand."""

import math

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.dpo import DPO, dpo_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# One pair, β = 0.5:
#   log π(y_w) = -2.0, log π_ref(y_w) = -2.5  ->  chosen log-ratio   = +0.5
#   log π(y_l) = -3.0, log π_ref(y_l) = -2.5  ->  rejected log-ratio = -0.5
#   h = β (0.5 - (-0.5)) = 0.5
#   DPO:  -log σ(0.5) = log(1 + e^-0.5) = log 1.6065306597 = 0.4740769842
#   cDPO, ε = 0.1: 0.9 log(1 + e^-0.5) + 0.1 log(1 + e^0.5)
#        = 0.9 · 0.4740769842 + 0.1 · 0.9740769842 = 0.5240769842
#   (log(1 + e^0.5) = 0.5 + log(1 + e^-0.5), so cDPO adds exactly ε · h here.)
#   rewards: β · 0.5 = 0.25 (chosen), β · -0.5 = -0.25 (rejected)
POLICY, REFERENCE = (t(-2.0), t(-3.0)), (t(-2.5), t(-2.5))


def test_dpo_matches_hand_derivation():
    losses, chosen_r, rejected_r = dpo_loss(*POLICY, *REFERENCE, beta=0.5)
    assert losses.item() == pytest.approx(0.4740769842, abs=1e-9)
    assert chosen_r.item() == pytest.approx(0.25) and rejected_r.item() == pytest.approx(-0.25)


def test_cdpo_matches_hand_derivation():
    losses, _, _ = dpo_loss(*POLICY, *REFERENCE, beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.5240769842, abs=1e-9)


def test_cdpo_at_zero_smoothing_is_dpo():
    gen = torch.Generator().manual_seed(0)
    logps = [-torch.rand(16, generator=gen, dtype=torch.float64) * 20 for _ in range(4)]
    dpo, *_ = dpo_loss(*logps, beta=0.3)
    cdpo, *_ = dpo_loss(*logps, beta=0.3, label_smoothing=0.0)
    torch.testing.assert_close(cdpo, dpo, rtol=0, atol=0)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_policy_equal_to_reference_gives_log2(smoothing):
    logps = t(-7.0, -1.5, -30.0)
    losses, chosen_r, rejected_r = dpo_loss(logps, logps - 1.0, logps, logps - 1.0, beta=0.1,
                                            label_smoothing=smoothing)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    assert torch.all(chosen_r == 0) and torch.all(rejected_r == 0)


def test_gradient_is_beta_times_sigmoid_of_minus_h():
    # dL/dh = -σ(-h); dh/d log π(y_w) = β  ->  dL/d log π(y_w) = -β σ(-h) = -0.5 σ(-0.5)
    chosen = t(-2.0).requires_grad_()
    losses, _, _ = dpo_loss(chosen, POLICY[1], *REFERENCE, beta=0.5)
    losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.5)), abs=1e-12)


def _inputs(**over):
    base = dict(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4), rejected_tokens=t(2),
                ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    base.update(over)
    return PairwiseLogps(**base)


def test_reference_free_ignores_reference():
    # h = β (log π(y_w) - log π(y_l)) = 0.5 · 1.0: the same loss as above, by construction.
    out = DPO(DPO.Config(beta=0.5, reference_free=True)).loss(_inputs(ref_chosen=t(9.0)))
    assert out.loss.item() == pytest.approx(0.4740769842, abs=1e-9)
    assert DPO(DPO.Config(reference_free=True)).needs().reference is False


def test_length_normalisation():
    # per-token: π(y_w) -2/4 = -0.5, ref -2.5/4 = -0.625 -> ratio 0.125
    #            π(y_l) -3/2 = -1.5, ref -2.5/2 = -1.25  -> ratio -0.25
    # h = 0.5 · 0.375 = 0.1875;  L = log(1 + e^-0.1875)
    out = DPO(DPO.Config(beta=0.5, length_normalize=True)).loss(_inputs())
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.1875)), abs=1e-12)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.0625)


def test_metrics_follow_schema():
    out = DPO(DPO.Config(beta=0.5)).loss(_inputs())
    assert set(out.metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins",
                                "rewards/accuracies"}
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.5)
    assert out.metrics["rewards/accuracies"].item() == 1.0


@pytest.mark.parametrize("field,value", [("beta", 0.0), ("label_smoothing", 0.5)])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        DPO(DPO.Config(**{field: value}))
