"""The RL math against hand computation and the definitions it estimates."""

import math

import pytest
import torch

from prefopt import rl


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log(0.25 / 0.5) = -log 2
    assert rl.kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert rl.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimators_are_unbiased_for_the_kl_they_estimate(estimator):
    # E_{y~π}[k(y)] = KL(π || π_ref) = Σ_y π(y) log π(y)/π_ref(y), exactly, for both.
    pi = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    ref = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    kl = float((pi * (pi / ref).log()).sum())
    per_token = rl.kl_estimate(pi.log(), ref.log(), estimator)
    assert float((pi * per_token).sum()) == pytest.approx(kl, rel=1e-12)


def test_k3_is_never_negative_and_k1_can_be():
    logp = torch.log(torch.tensor([0.1, 0.5, 0.9]))
    ref = torch.log(torch.tensor([0.8, 0.5, 0.05]))
    assert (rl.kl_estimate(logp, ref, "k3") >= 0).all()
    assert rl.kl_estimate(logp, ref, "k1")[0] < 0


def test_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.25, 0.75])
    group = torch.tensor([0, 0, 0, 1, 1])
    # A_i = r_i - mean of the others: 1 - 4, 2 - 3.5, 6 - 1.5; 0.25 - 0.75, 0.75 - 0.25
    expected = torch.tensor([-3.0, -1.5, 4.5, -0.5, 0.5])
    torch.testing.assert_close(rl.leave_one_out_advantages(rewards, group), expected)


def test_group_normalisation_by_hand():
    rewards, group = torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0, 0, 0])
    std = math.sqrt((4 + 1 + 9) / 2)  # sample std around the mean 3
    expected = torch.tensor([-2.0, -1.0, 3.0]) / (std + 1e-4)
    torch.testing.assert_close(rl.group_normalised_advantages(rewards, group), expected)
    torch.testing.assert_close(rl.group_normalised_advantages(rewards, group, scale=False),
                               torch.tensor([-2.0, -1.0, 3.0]))


@pytest.mark.parametrize("fn", [rl.leave_one_out_advantages, rl.group_normalised_advantages])
def test_baselines_refuse_a_single_sample(fn):
    with pytest.raises(ValueError, match="num_samples >= 2"):
        fn(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


def test_gae_by_hand():
    # One prompt position (off the mask), then three completion tokens; a second row whose
    # completion is two tokens, right-padded.
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([[5.0, 0.1, 0.2, 1.0], [0.0, 0.0, 2.0, 7.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3], [9.0, 1.0, 0.5, 9.0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = rl.gae(rewards, values, mask, gamma, lam)
    # row 0: δ3 = 1 - 0.3 = 0.7; δ2 = 0.2 + 0.9*0.3 - 0.4 = 0.07; δ1 = 0.1 + 0.9*0.4 - 0.5
    a3 = 0.7
    a2 = 0.07 + 0.72 * a3
    a1 = -0.04 + 0.72 * a2
    # row 1: δ2 = 2 - 0.5 = 1.5 (V after the end is 0); δ1 = 0 + 0.9*0.5 - 1.0 = -0.55
    b2 = 1.5
    b1 = -0.55 + 0.72 * b2
    torch.testing.assert_close(advantages, torch.tensor([[0.0, a1, a2, a3], [0.0, b1, b2, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.0, a1 + 0.5, a2 + 0.4, a3 + 0.3],
                                                      [0.0, b1 + 1.0, b2 + 0.5, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    mask = torch.tensor([[1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([[0.1, 0.2, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3]])
    advantages, returns = rl.gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.3, 1.2, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[0.8, 0.8, 0.7]]))


def test_masked_whiten_by_hand():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    std = math.sqrt(2 / 3)  # population std of 1, 2, 3
    expected = torch.tensor([[-1 / std, 0.0], [1 / std, 0.0]])
    torch.testing.assert_close(rl.masked_whiten(values, mask), expected)


def test_explained_variance():
    target = torch.tensor([[1.0, 2.0, 4.0]])
    mask = torch.ones_like(target, dtype=torch.bool)
    assert rl.explained_variance(target, target, mask).item() == pytest.approx(1.0)
    assert rl.explained_variance(torch.full_like(target, 7.0), target, mask).item() == \
        pytest.approx(0.0, abs=1e-6)
    # Residual variance of (1, 2, 4) - (1, 1, 1) = (0, 1, 3): 14/9; target variance 14/9.
    assert rl.explained_variance(torch.ones_like(target), target, mask).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_aggregations_by_hand():
    losses = torch.tensor([[1.0, 2.0, 50.0], [3.0, 60.0, 70.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert rl.aggregate(losses, mask, "token_mean").item() == pytest.approx(6 / 3)
    assert rl.aggregate(losses, mask, "sequence_mean").item() == pytest.approx((1.5 + 3) / 2)
    assert rl.aggregate(losses, mask, "sequence_sum").item() == pytest.approx((3 + 3) / 2)


def test_adaptive_kl_controller_by_hand():
    # e = clip(12/6 - 1, -0.2, 0.2) = 0.2; β (1 + 0.2 * 100/1000)
    assert rl.adaptive_kl_coef(0.1, 12.0, 6.0, 1000, 100) == pytest.approx(0.102)
    # e = 5.7/6 - 1 = -0.05
    assert rl.adaptive_kl_coef(0.1, 5.7, 6.0, 1000, 100) == pytest.approx(0.1 * (1 - 0.005))


def test_group_sizes():
    assert rl.group_sizes(torch.tensor([0, 0, 1, 2, 2, 2])).tolist() == [2, 2, 1, 3, 3, 3]


def test_uniform_groups_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.5, -2.0, -2.0, -2.0, 3.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    # group 3 has one sample: trivially uniform
    assert rl.uniform_groups(rewards, group).tolist() == [True, False, True, True]
