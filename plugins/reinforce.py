"""REINFORCE with a leave-one-out (RLOO) or group-normalised baseline, and a KL penalty.

Williams, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning", Machine Learning 8, 1992; for language models with k samples per
prompt and the leave-one-out baseline: Ahmadian et al., "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs", ACL 2024,
arXiv:2402.14740 (after Kool et al., "Buy 4 REINFORCE samples, get a baseline for free!",
2019). For prompt x and its samples y_1..y_k ~ π_θ(·|x) with rewards r_i:

    baseline=leave_one_out:  A_i = r_i − 1/(k−1) Σ_{j≠i} r_j
    baseline=group_norm:     A_i = (r_i − mean_j r_j) / (std_j r_j + 1e-4)   (GRPO, Shao
                             et al., 2024, arXiv:2402.03300; sample std)
    baseline=none:           A_i = r_i

    ∇J ≈ mean_i A_i ∇ Σ_t log π_θ(y_i,t | x, y_i,<t)

The loss is −A_i log π_θ(y_i,t) per token, aggregated by `aggregation` (prefopt.rl:
sequence_sum is the estimator above, token_mean and sequence_mean rescale it per token or
per completion). One optimizer step per rollout: the samples are always on-policy.

KL regularisation to the reference policy, with a per-token estimator k(t) of
KL(π_θ ‖ π_ref) (`kl_estimator`: k1 = log π_θ/π_ref, k3 = π_ref/π_θ − 1 − log π_ref/π_θ):

    kl_in=reward:  r_i ← r_i − β Σ_t k(t)  (detached; the baseline sees the penalised
                   reward, as in RLOO)
    kl_in=loss:    L ← L + β · aggregate(k(t)) with its gradient (as GRPO does, with k3;
                   k1 in the loss has zero expected gradient on samples of π_θ)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from prefopt.objective import (
    Advantages,
    Experience,
    LossOutput,
    Needs,
    ObjectiveConfig,
    OnlineLogps,
    OnlineObjective,
    require_non_negative,
)
from prefopt.rl import (
    Aggregation,
    KLEstimator,
    aggregate,
    group_normalised_advantages,
    kl_estimate,
    leave_one_out_advantages,
)


class Baseline(str, enum.Enum):
    leave_one_out = "leave_one_out"
    group_norm = "group_norm"
    none = "none"


class KLPlacement(str, enum.Enum):
    reward = "reward"
    loss = "loss"


def sequence_advantages(rewards: torch.Tensor, group: torch.Tensor, baseline: Baseline
                        ) -> torch.Tensor:
    """[R] advantages of whole completions under the chosen baseline."""
    if baseline == Baseline.leave_one_out:
        return leave_one_out_advantages(rewards, group)
    if baseline == Baseline.group_norm:
        return group_normalised_advantages(rewards, group)
    return rewards


class Reinforce(OnlineObjective):
    """REINFORCE on sampled completions, RLOO or group-normalised baseline, KL to π_ref."""

    description = "REINFORCE with leave-one-out (RLOO) or group baselines; KL to the reference"

    @dataclass
    class Config(ObjectiveConfig):
        baseline: Baseline = Baseline.leave_one_out
        """leave_one_out (RLOO), group_norm (GRPO's (r − mean) / std) or none."""
        kl_coef: float = 0.05
        """β of the KL penalty to the reference policy; 0 loads no reference model."""
        kl_estimator: KLEstimator = KLEstimator.k1
        """Per-token KL estimator: k1 (log π/π_ref) or k3 (r − 1 − log r, r = π_ref/π)."""
        kl_in: KLPlacement = KLPlacement.reward
        """Where the KL penalty goes: into the reward (detached) or into the loss."""
        aggregation: Aggregation = Aggregation.sequence_sum
        """sequence_sum (REINFORCE), sequence_mean (GRPO) or token_mean (DAPO)."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_non_negative(config, "kl_coef")

    def needs(self) -> Needs:
        return Needs(reference=self.config.kl_coef > 0, token_logps=True)

    def _token_kl(self, logps, ref_logps, mask) -> torch.Tensor:
        return kl_estimate(logps, ref_logps, self.config.kl_estimator) * mask

    def advantages(self, experience: Experience) -> Advantages:
        c, mask = self.config, experience.mask
        rewards = experience.scores
        metrics = {}
        if c.kl_coef > 0:
            kl = self._token_kl(experience.logps, experience.ref_logps, mask).sum(1)
            metrics["reinforce/kl_penalty"] = c.kl_coef * kl
            if c.kl_in == KLPlacement.reward:
                rewards = rewards - c.kl_coef * kl
        advantages = sequence_advantages(rewards, experience.group, c.baseline)
        metrics["reinforce/advantage_std"] = advantages.std() if advantages.numel() > 1 \
            else advantages.new_zeros(())
        return Advantages(advantages=advantages[:, None] * mask, rewards=rewards,
                          metrics=metrics)

    def loss(self, inputs: OnlineLogps) -> LossOutput:
        c, mask = self.config, inputs.mask
        policy_loss = aggregate(-inputs.advantages * inputs.logps, mask, c.aggregation)
        loss = policy_loss
        metrics = {"reinforce/policy_loss": policy_loss.detach()}
        if c.kl_coef > 0 and c.kl_in == KLPlacement.loss:
            kl_loss = aggregate(self._token_kl(inputs.logps, inputs.ref_logps, mask), mask,
                                c.aggregation)
            loss = loss + c.kl_coef * kl_loss
            metrics["reinforce/kl_loss"] = kl_loss.detach()
        return LossOutput(loss, metrics)
