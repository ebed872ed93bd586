"""REINFORCE: advantages, KL placement and the loss against hand computation."""

import math

import pytest
import torch

from prefopt.objective import Experience, OnlineLogps
from prefopt.plugins.reinforce import Reinforce

# 2 prompts x 2 samples; position 0 is the prompt's last token (off the mask).
MASK = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
LOGPS = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0], [0.0, -1.0, -1.0],
                      [0.0, -0.2, -0.3]])
# log π − log π_ref per token: row 0: 0.2 + 0.3; row 1: 0.1; row 2: 0 + 0; row 3: 0.4 + 0.6
REF = LOGPS - torch.tensor([[0.0, 0.2, 0.3], [0.0, 0.1, 0.0], [0.0, 0.0, 0.0],
                            [0.0, 0.4, 0.6]])
SCORES = torch.tensor([1.0, 0.0, 0.5, 0.5])
GROUP = torch.tensor([0, 0, 1, 1])


def _objective(**overrides):
    return Reinforce(Reinforce.Config(name="reinforce", **overrides))


def _experience():
    return Experience(mask=MASK, logps=LOGPS, scores=SCORES, group=GROUP, ref_logps=REF)


def test_leave_one_out_with_the_kl_in_the_reward_by_hand():
    out = _objective(kl_coef=0.1).advantages(_experience())
    # r = score − 0.1 Σ_t k1: [1 − 0.05, 0 − 0.01, 0.5 − 0, 0.5 − 0.1]
    torch.testing.assert_close(out.rewards, torch.tensor([0.95, -0.01, 0.5, 0.4]))
    # k = 2: A_i = r_i − r_other
    a = torch.tensor([0.96, -0.96, 0.1, -0.1])
    torch.testing.assert_close(out.advantages, a[:, None] * MASK)


def test_kl_in_the_loss_leaves_the_rewards_alone():
    out = _objective(kl_coef=0.1, kl_in="loss").advantages(_experience())
    torch.testing.assert_close(out.advantages, torch.tensor([1.0, -1.0, 0.0, 0.0])[:, None] * MASK)


def test_group_norm_and_no_baseline():
    group_norm = _objective(kl_coef=0.0, baseline="group_norm").advantages(_experience())
    # group 0: scores 1, 0: mean 0.5, sample std √0.5, A = ±0.5 / (√0.5 + 1e-4);
    # group 1: equal scores, A = 0
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(group_norm.advantages,
                               torch.tensor([a, -a, 0.0, 0.0])[:, None] * MASK)
    plain = _objective(kl_coef=0.0, baseline="none").advantages(_experience())
    torch.testing.assert_close(plain.advantages, SCORES[:, None] * MASK)


def _inputs(logps, advantages, ref=None):
    return OnlineLogps(logps=logps, entropy=torch.zeros(4), mask=MASK, old_logps=LOGPS,
                       advantages=advantages, ref_logps=ref)


@pytest.mark.parametrize("aggregation,normaliser", [
    ("sequence_sum", torch.full((4, 1), 4.0)),  # mean over the 4 completions of Σ_t
    ("token_mean", torch.full((4, 1), 7.0)),  # 7 completion tokens in all
    ("sequence_mean", 4.0 * MASK.sum(1, keepdim=True).float()),  # mean_i of Σ_t / T_i
])
def test_loss_and_gradient_by_hand(aggregation, normaliser):
    a = torch.tensor([0.96, -0.96, 0.1, -0.1])[:, None] * MASK
    logps = LOGPS.clone().requires_grad_(True)
    out = _objective(kl_coef=0.1, aggregation=aggregation).loss(_inputs(logps, a))
    expected = float((-(a * LOGPS) / normaliser).sum())
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    out.loss.backward()
    torch.testing.assert_close(logps.grad, -a / normaliser)


def test_k3_penalty_in_the_loss_and_its_gradient():
    a = torch.zeros(4, 3)
    logps = LOGPS.clone().requires_grad_(True)
    objective = _objective(kl_coef=0.5, kl_in="loss", kl_estimator="k3",
                           aggregation="token_mean")
    out = objective.loss(_inputs(logps, a, REF))
    d = (REF - LOGPS)  # log r
    k3 = (torch.exp(d) - 1 - d) * MASK
    assert out.loss.item() == pytest.approx(0.5 * float(k3.sum()) / 7, rel=1e-6)
    assert out.metrics["reinforce/kl_loss"].item() == pytest.approx(float(k3.sum()) / 7, rel=1e-6)
    out.loss.backward()
    # d k3 / d log π = 1 − π_ref/π
    torch.testing.assert_close(logps.grad, 0.5 * (1 - torch.exp(d)) * MASK / 7)


def test_needs_and_bad_config():
    assert _objective(kl_coef=0.0).needs().reference is False
    assert _objective().needs().reference is True
    with pytest.raises(ValueError, match="objective.kl_coef"):
        _objective(kl_coef=-1.0)
