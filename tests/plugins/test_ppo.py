"""PPO: token rewards, GAE advantages, clipped losses and KL control against hand values."""

import math

import pytest
import torch

from prefopt.objective import Experience, OnlineLogps
from prefopt.plugins.ppo import PPO, clipped_policy_loss, clipped_value_loss, token_rewards

MASK = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)


def _objective(**overrides):
    return PPO(PPO.Config(name="ppo", **overrides))


def test_token_rewards_put_the_score_on_the_last_token():
    scores = torch.tensor([1.0, 0.5])
    kl = torch.tensor([[9.0, 0.1, 0.2, 0.3], [9.0, 0.4, 0.5, 9.0]])
    rewards = token_rewards(scores, kl, MASK, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.01, -0.02, -0.03 + 1.0],
                                                      [0.0, -0.04, -0.05 + 0.5, 0.0]]))
    torch.testing.assert_close(token_rewards(scores, None, MASK, 0.1),
                               torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.5, 0.0]]))


def test_advantages_are_reward_to_go_minus_value_with_gamma_lambda_one():
    values = torch.tensor([[0.0, 0.2, 0.4, 0.6], [0.0, 0.1, 0.3, 0.0]])
    logps = torch.tensor([[0.0, -1.0, -1.0, -1.0], [0.0, -1.0, -1.0, 0.0]])
    experience = Experience(mask=MASK, logps=logps, scores=torch.tensor([1.0, 0.5]),
                            group=torch.tensor([0, 1]), ref_logps=logps - 0.1, values=values)
    objective = _objective(gamma=1.0, lam=1.0, whiten_advantages=False, kl_coef=0.2)
    out = objective.advantages(experience)
    # per-token reward −0.2 · 0.1 = −0.02, plus the score on the last token
    # row 0 returns: 3 tokens to go: 1 − 0.06, 1 − 0.04, 1 − 0.02
    returns = torch.tensor([[0.0, 0.94, 0.96, 0.98], [0.0, 0.46, 0.48, 0.0]])
    torch.testing.assert_close(out.returns, returns)
    torch.testing.assert_close(out.advantages, (returns - values) * MASK)
    torch.testing.assert_close(out.rewards, torch.tensor([0.94, 0.46]))


def test_whitened_advantages_have_zero_mean_unit_variance_over_tokens():
    values = torch.zeros(2, 4)
    logps = torch.full((2, 4), -1.0) * MASK
    experience = Experience(mask=MASK, logps=logps, scores=torch.tensor([1.0, -2.0]),
                            group=torch.tensor([0, 1]), ref_logps=logps, values=values)
    a = _objective().advantages(experience).advantages[MASK]
    assert a.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert a.var(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


def test_clipped_policy_loss_by_hand():
    mask = torch.ones(1, 4, dtype=torch.bool)
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.5]]))
    advantages = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    loss, ratio, clipped = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    # max(−Aρ, −A clip(ρ)): A=1, ρ=1.5: max(−1.5, −1.2) = −1.2 (clipped);
    # A=−1, ρ=0.5: max(0.5, 0.8) = 0.8 (clipped); A=2, ρ=1.1: −2.2 (inside);
    # A=1, ρ=0.5: max(−0.5, −0.8) = −0.5 (unclipped: the pessimistic term is the ratio's)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 0.5) / 4, rel=1e-6)
    assert clipped.tolist() == [[True, True, False, False]]
    torch.testing.assert_close(ratio, torch.tensor([[1.5, 0.5, 1.1, 0.5]]))


def test_clipped_value_loss_by_hand():
    mask = torch.ones(1, 3, dtype=torch.bool)
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 0.1, -0.5]])
    returns = torch.tensor([[1.0, 1.0, 0.0]])
    loss, clipped = clipped_value_loss(new, old, returns, mask, clip=0.2)
    # token 0: unclipped (0.5−1)² = 0.25, clipped (0.2−1)² = 0.64 -> 0.64
    # token 1: (0.1−1)² = 0.81 both (inside the clip range)
    # token 2: (−0.5)² = 0.25, clipped (−0.2)² = 0.04 -> 0.25
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 0.25) / 3, rel=1e-6)
    assert clipped.tolist() == [[True, False, False]]
    unclipped, _ = clipped_value_loss(new, old, returns, mask, clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.81 + 0.25) / 3, rel=1e-6)


def test_loss_combines_the_terms():
    objective = _objective(value_coef=0.5, entropy_coef=0.01)
    mask = torch.ones(1, 2, dtype=torch.bool)
    zeros = torch.zeros(1, 2)
    inputs = OnlineLogps(logps=zeros, entropy=torch.tensor([3.0]), mask=mask, old_logps=zeros,
                         advantages=torch.tensor([[1.0, 1.0]]), values=torch.tensor([[0.0, 1.0]]),
                         old_values=torch.tensor([[0.0, 1.0]]), returns=torch.tensor([[1.0, 1.0]]))
    out = objective.loss(inputs)
    # ratio 1: L_clip = −1; L_V = ½ (1 + 0) / 2 = 0.25; entropy per token 3 / 2
    assert out.loss.item() == pytest.approx(-1 + 0.5 * 0.25 - 0.01 * 1.5, rel=1e-6)
    assert out.metrics["ppo/clip_fraction"].item() == 0.0
    assert out.metrics["ppo/approx_kl"].item() == 0.0


def test_adaptive_kl_moves_the_coefficient_and_is_saved():
    objective = _objective(kl_coef=0.1, target_kl=1.0, kl_horizon=100.0)
    logps = torch.zeros(2, 4)
    ref = logps - 1.0 * MASK  # k1 = 1 per token: sequence KL 3 and 2, mean 2.5
    experience = Experience(mask=MASK, logps=logps, scores=torch.zeros(2),
                            group=torch.tensor([0, 1]), ref_logps=ref, values=torch.zeros(2, 4))
    metrics = objective.after_rollout(experience)
    assert metrics["ppo/kl_coef"].item() == pytest.approx(0.1)  # the value the rollout used
    # e = clip(2.5 / 1 − 1, −0.2, 0.2) = 0.2; β (1 + 0.2 · 2 / 100)
    assert objective.kl_coef == pytest.approx(0.1 * (1 + 0.2 * 2 / 100))
    fresh = _objective(kl_coef=0.1, target_kl=1.0)
    fresh.load_state_dict(objective.state_dict())
    assert fresh.kl_coef == objective.kl_coef
    fixed = _objective(kl_coef=0.1)
    fixed.after_rollout(experience)
    assert fixed.kl_coef == 0.1


@pytest.mark.parametrize("overrides,message", [
    ({"clip_ratio": 0.0}, "clip_ratio"), ({"epochs": 0}, "epochs"),
    ({"target_kl": 1.0, "kl_coef": 0.0}, "target_kl"), ({"lam": 1.5}, "lam"),
    ({"kl_coef": -0.1}, "kl_coef"),
])
def test_bad_config_is_named(overrides, message):
    with pytest.raises(ValueError, match=f"objective.{message}"):
        _objective(**overrides)


def test_needs_follow_the_config():
    needs = _objective(entropy_coef=0.01, value_model="separate").needs()
    assert needs.entropy and needs.value_model == "separate" and needs.reference
    assert not _objective(kl_coef=0.0).needs().reference
    assert _objective().schedule() == (4, 1)
    assert math.isfinite(_objective().kl_coef)
