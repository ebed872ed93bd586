"""GRPO and its variants: Dr. GRPO, DAPO, GSPO, as settings of one objective.

GRPO: Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
Language Models", arXiv:2402.03300 (2024). For prompt x, k samples y_1..y_k ~ π_old
with rewards r_i, a group-relative advantage shared by every token of y_i,

    A_i = (r_i − mean_j r_j) / (std_j r_j + 1e-4)      (sample std, as TRL)

and, per token t of y_i, with ρ_{i,t} = π_θ(y_{i,t}) / π_old(y_{i,t}),

    ℓ_{i,t} = −min(ρ_{i,t} A_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high) A_i) + β k3_{i,t}
    k3_{i,t} = π_ref/π_θ − log π_ref/π_θ − 1       (Schulman's k3 estimate of KL(π_θ ‖ π_ref))

The knobs that make the variants (names as TRL 1.16's GRPOConfig where they mean the same):

- `loss_type`, how ℓ_{i,t} of a minibatch of r completions becomes one number:
    grpo     mean_i (Σ_t ℓ_{i,t} / |y_i|)              GRPO: every completion weighs the same
    bnpo     Σ_i Σ_t ℓ_{i,t} / Σ_i |y_i|               token mean over the minibatch
    dapo     Σ_i Σ_t ℓ_{i,t} / (N / minibatches)       DAPO's token mean over the whole
             rollout (N its completion tokens): the minibatches' losses add up to it
    dr_grpo  Σ_i Σ_t ℓ_{i,t} / (r · L_max)              Dr. GRPO's constant normaliser,
             L_max = `max_completion_length` (the rollout's max_new_tokens)
  With one minibatch per epoch dapo and bnpo are the same loss.
- `scale_rewards`: group (GRPO), batch (divide by the std of the whole rollout's rewards,
  after the group mean is subtracted) or none (Dr. GRPO: Liu et al., "Understanding
  R1-Zero-Like Training: A Critical Perspective", arXiv:2503.20783, 2025, who show that
  dividing by the group std biases towards too easy and too hard prompts, and that the
  per-completion 1/|y_i| biases towards long wrong answers; hence dr_grpo's constant).
- `epsilon_low`, `epsilon_high`: asymmetric clipping ("clip-higher") of DAPO: Yu et al.,
  "DAPO: An Open-Source LLM Reinforcement Learning System at Scale", arXiv:2503.14476
  (2025): ε_high > ε_low leaves room for unlikely tokens to gain probability. TRL calls
  ε_low `epsilon`.
- `beta`: β of the k3 KL term in the loss; 0 (DAPO, Dr. GRPO) loads no reference model.
- `overlong_max`, `overlong_cache`: DAPO's soft overlong punishment, added to the reward
  (|y| the completion's tokens, EOS included; L_max = overlong_max, L_c = overlong_cache):
      R_len(y) = 0                              |y| ≤ L_max − L_c
                 ((L_max − L_c) − |y|) / L_c    L_max − L_c < |y| ≤ L_max
                 −1                             |y| > L_max
- `num_iterations` (μ) passes over each rollout in `minibatches` minibatches, one optimizer
  step per minibatch; the first minibatch's ratio is exactly 1, so with μ = minibatches = 1
  the clipping never acts and the loss is the policy gradient.
- `importance_sampling_level=sequence`: GSPO, Zheng et al., "Group Sequence Policy
  Optimization", arXiv:2507.18071 (2025): one ratio per completion, the geometric mean of
  its token ratios, s_i = exp(mean_t (log π_θ(y_{i,t}) − log π_old(y_{i,t}))), clipped as a
  whole; every token of y_i gets ℓ_{i,t} = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i).
  With loss_type=grpo that is the paper's per-sequence objective.

DAPO's dynamic sampling (dropping groups whose rewards are all equal) is a rollout setting
of every online objective: `rollout.dynamic_sampling=true` (prefopt.online.module).

Where TRL 1.16 differs: its `dapo` normalises by the tokens of the generation batch per
gradient-accumulation window, which is this `dapo` when one rollout is one generation
batch; TRL adds no overlong shaping in the trainer (it is a reward function there).
Everything else matches TRL's `_compute_loss` to 1e-6 (tests/plugins/test_grpo.py).

Metrics: `grpo/clip_fraction_low` (share of tokens, or of completions at sequence level,
with A < 0 and ratio < 1 − ε_low: the clipped term acts), `grpo/clip_fraction_high` (A > 0
and ratio > 1 + ε_high), `grpo/ratio`, `grpo/policy_loss`, `grpo/kl` (the mean k3 per token,
with β > 0), `grpo/overlong_penalty` (the mean R_len, when on), `grpo/advantage_std`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

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
    require_positive,
)
from prefopt.rl import (
    KLEstimator,
    group_normalised_advantages,
    kl_estimate,
    masked_mean,
)

STD_EPS = 1e-4  # added to the std before dividing, as GRPO's reference code and TRL do


class LossType(str, enum.Enum):
    grpo = "grpo"
    bnpo = "bnpo"
    dapo = "dapo"
    dr_grpo = "dr_grpo"


class ScaleRewards(str, enum.Enum):
    group = "group"
    batch = "batch"
    none = "none"


class ImportanceSampling(str, enum.Enum):
    token = "token"
    sequence = "sequence"


def overlong_penalty(lengths: torch.Tensor, max_length: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment R_len of completions of `lengths` tokens."""
    start = max_length - cache
    ramp = (start - lengths.to(torch.float32)) / cache
    return torch.where(lengths <= start, torch.zeros_like(ramp),
                       torch.where(lengths <= max_length, ramp, -torch.ones_like(ramp)))


def scaled_advantages(rewards: torch.Tensor, group: torch.Tensor, scale: ScaleRewards
                      ) -> torch.Tensor:
    """[R] r_i − mean of its group, divided by the group's std, the rollout's std or 1."""
    if scale == ScaleRewards.group:
        return group_normalised_advantages(rewards, group, eps=STD_EPS)
    centred = group_normalised_advantages(rewards, group, scale=False)
    if scale == ScaleRewards.batch:
        std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        return centred / (std + STD_EPS)
    return centred


def log_importance_weights(logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor,
                           level: ImportanceSampling) -> torch.Tensor:
    """log ρ per token [r, L], or GSPO's log s_i per completion [r, 1]."""
    log_ratio = (logps - old_logps) * mask
    if level == ImportanceSampling.token:
        return log_ratio
    return (log_ratio.sum(1) / mask.sum(1).clamp(min=1))[:, None]


class GRPO(OnlineObjective):
    """GRPO with the knobs of Dr. GRPO, DAPO and GSPO: see the module docstring."""

    description = "GRPO (and Dr. GRPO, DAPO, GSPO): group-relative advantages, clipped ratio"

    @dataclass
    class Config(ObjectiveConfig):
        loss_type: LossType = LossType.grpo
        """Loss aggregation: grpo (sequence mean, then batch mean), bnpo (token mean of
        the minibatch), dapo (token mean of the rollout), dr_grpo (Σ / (rows × L_max))."""
        scale_rewards: ScaleRewards = ScaleRewards.group
        """Divide the group-centred rewards by the group std, the rollout std, or none."""
        epsilon_low: float = 0.2
        """ε_low: the ratio is clipped below at 1 − ε_low (TRL's `epsilon`)."""
        epsilon_high: float = 0.2
        """ε_high: the ratio is clipped above at 1 + ε_high (DAPO: 0.28)."""
        beta: float = 0.04
        """β of the k3 KL term to the reference in the loss; 0 loads no reference model."""
        importance_sampling_level: ImportanceSampling = ImportanceSampling.token
        """token (GRPO) or sequence (GSPO: one length-normalised ratio per completion)."""
        num_iterations: int = 1
        """μ: passes over each rollout (TRL's num_iterations)."""
        minibatches: int = 1
        """Optimizer steps per pass (the rollout split in this many minibatches)."""
        max_completion_length: Optional[int] = None
        """dr_grpo's L_max (its constant normaliser), the rollout's max_new_tokens: the
        dr_grpo preset sets it to ${rollout.max_new_tokens}; empty: loss_type=dr_grpo is
        refused."""
        overlong_max: Optional[int] = None
        """DAPO's overlong shaping: L_max in tokens; empty: off."""
        overlong_cache: int = 4
        """DAPO's L_cache: the punishment ramps from 0 to −1 over this many tokens."""

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        require_non_negative(c, "beta", "epsilon_low", "epsilon_high")
        require_positive(c, "num_iterations", "minibatches", "overlong_cache")
        if c.epsilon_low >= 1:
            raise ValueError(f"objective.epsilon_low must be < 1 (the ratio is clipped at "
                             f"1 − epsilon_low > 0), got {c.epsilon_low}")
        for name in ("max_completion_length", "overlong_max"):
            value = getattr(c, name)
            if value is not None and not value > 0:
                raise ValueError(f"objective.{name} must be > 0, got {value}")
        if LossType(c.loss_type) == LossType.dr_grpo and c.max_completion_length is None:
            raise ValueError("objective.loss_type=dr_grpo needs objective.max_completion_length"
                             " (its constant normaliser: set it to rollout.max_new_tokens, "
                             "or use objective=dr_grpo, which does)")
        if c.overlong_max is not None and c.overlong_cache > c.overlong_max:
            raise ValueError(f"objective.overlong_cache ({c.overlong_cache}) must be <= "
                             f"objective.overlong_max ({c.overlong_max})")
        # dapo's normaliser: the rollout's completion tokens per minibatch, set by
        # advantages() for the loss() calls on that rollout.
        self._tokens_per_minibatch: float | None = None

    def needs(self) -> Needs:
        return Needs(reference=self.config.beta > 0, token_logps=True)

    def schedule(self) -> tuple[int, int]:
        return self.config.num_iterations, self.config.minibatches

    # -- advantages ------------------------------------------------------------------

    def advantages(self, experience: Experience) -> Advantages:
        c, mask = self.config, experience.mask
        rewards = experience.scores
        metrics = {}
        if c.overlong_max is not None:
            penalty = overlong_penalty(mask.sum(1), c.overlong_max, c.overlong_cache)
            rewards = rewards + penalty.to(rewards.dtype)
            metrics["grpo/overlong_penalty"] = penalty
        advantages = scaled_advantages(rewards, experience.group, ScaleRewards(c.scale_rewards))
        metrics["grpo/advantage_std"] = advantages.std() if advantages.numel() > 1 \
            else advantages.new_zeros(())
        self._tokens_per_minibatch = float(mask.sum()) / c.minibatches
        return Advantages(advantages=advantages[:, None] * mask, rewards=rewards,
                          metrics=metrics)

    # -- loss ------------------------------------------------------------------------

    def _aggregate(self, losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        c = self.config
        losses = losses * mask
        loss_type = LossType(c.loss_type)
        if loss_type == LossType.grpo:
            return (losses.sum(1) / mask.sum(1).clamp(min=1)).mean()
        if loss_type == LossType.bnpo:
            return losses.sum() / mask.sum().clamp(min=1)
        if loss_type == LossType.dapo:
            if self._tokens_per_minibatch is None:
                raise RuntimeError("objective.loss_type=dapo: loss() before advantages() "
                                   "(the rollout's token count is its normaliser)")
            return losses.sum() / max(self._tokens_per_minibatch, 1.0)
        return losses.sum() / (mask.shape[0] * c.max_completion_length)

    def loss(self, inputs: OnlineLogps) -> LossOutput:
        c, mask = self.config, inputs.mask
        mask_f = mask.to(inputs.logps.dtype)
        level = ImportanceSampling(c.importance_sampling_level)
        ratio = torch.exp(log_importance_weights(inputs.logps, inputs.old_logps, mask_f,
                                                 level))
        # The advantage is the sequence's on each of its tokens (0 off the mask); at the
        # sequence level one value per row is enough.
        advantages = inputs.advantages
        if level == ImportanceSampling.sequence:
            advantages = (advantages * mask_f).sum(1, keepdim=True) / \
                mask_f.sum(1, keepdim=True).clamp(min=1)
        clipped_ratio = ratio.clamp(1 - c.epsilon_low, 1 + c.epsilon_high)
        per_token = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
        per_token = per_token.expand_as(mask_f)
        policy_loss = self._aggregate(per_token, mask_f)
        loss = self._aggregate(per_token + self._kl_term(inputs), mask_f) if c.beta > 0 \
            else policy_loss

        detached = ratio.detach()
        low = ((detached < 1 - c.epsilon_low) & (advantages < 0)).float()
        high = ((detached > 1 + c.epsilon_high) & (advantages > 0)).float()
        if level == ImportanceSampling.token:  # shares of tokens
            metrics = {"grpo/clip_fraction_low": masked_mean(low, mask_f),
                       "grpo/clip_fraction_high": masked_mean(high, mask_f),
                       "grpo/ratio": masked_mean(detached, mask_f)}
        else:  # per completion [r]: the module averages them
            metrics = {"grpo/clip_fraction_low": low[:, 0], "grpo/clip_fraction_high": high[:, 0],
                       "grpo/ratio": detached[:, 0]}
        metrics["grpo/policy_loss"] = policy_loss.detach()
        if c.beta > 0:
            kl = kl_estimate(inputs.logps.detach(), inputs.ref_logps, KLEstimator.k3)
            metrics["grpo/kl"] = masked_mean(kl, mask_f)
        return LossOutput(loss, metrics)

    def _kl_term(self, inputs: OnlineLogps) -> torch.Tensor:
        """β k3(t) per token, with its gradient."""
        return self.config.beta * kl_estimate(inputs.logps, inputs.ref_logps, KLEstimator.k3)
