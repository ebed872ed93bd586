"""SimPO: Simple Preference Optimization with a reference-free reward.

Meng, Xia and Chen, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
2024, arXiv:2405.14734. The implicit reward of a completion is the policy's average
log-probability per token, scaled by β; no reference model takes part:

    r(x, y) = β / |y| · log π(y|x)
    L       = -log σ(r(x, y_w) - r(x, y_l) - γ)

Averaging over the |y| completion tokens matches the quantity generation ranks sequences
by, and keeps long completions from earning large rewards by length alone. γ ≥ 0 is a
target reward margin: the loss keeps pulling until the chosen reward exceeds the
rejected one by γ, not merely until it is larger.

Defaults: β = 2.0, γ = 1.0, the authors' Llama-3-Base setting (β = 2, γ/β = 0.5); their
recommended starting point is γ/β = 0.5 with β of 2 to 2.5 (SimPO needs a much larger β
than DPO because average log-probs vary far less than sums). The presets in
conf/objective/ hold their other published settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    PairwiseLogps,
    preference_metrics,
)


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_tokens: torch.Tensor,
               rejected_tokens: torch.Tensor, *, beta: float, gamma: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SimPO loss and rewards from summed log-probs and token counts.

    An empty completion counts as one token, so its reward is its (zero) sum, not 0/0.
    Returns (losses [B], chosen_rewards [B], rejected_rewards [B]).
    """
    chosen_rewards = beta * chosen / chosen_tokens.clamp(min=1)
    rejected_rewards = beta * rejected / rejected_tokens.clamp(min=1)
    # logsigmoid is the stable log σ: no overflow for large margins of either sign.
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards, rejected_rewards


class SimPO(Objective):
    """SimPO: reference-free, length-normalised reward margin with a target margin γ."""

    description = "SimPO: β·mean log π margin over a target γ, reference-free"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 2.0
        """β: scale of the reward β·(mean log-prob per token); SimPO uses 2 to 10."""
        gamma: float = 1.0
        """γ: target margin between the chosen and the rejected reward (reward units)."""

    def __init__(self, config: Config):
        super().__init__(config)
        if config.beta <= 0:
            raise ValueError(f"objective.beta must be > 0, got {config.beta}")
        if config.gamma < 0:
            raise ValueError(f"objective.gamma (target margin) must be >= 0, got {config.gamma}")

    def needs(self) -> Needs:
        return Needs(reference=False)  # prefopt then loads no reference model at all

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        c = self.config
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            inputs.chosen, inputs.rejected, inputs.chosen_tokens, inputs.rejected_tokens,
            beta=c.beta, gamma=c.gamma)
        metrics = preference_metrics(chosen_rewards, rejected_rewards)
        # Share of pairs already past the target margin: where the loss is mostly spent.
        metrics["simpo/above_target"] = (metrics["rewards/margins"] > c.gamma).float()
        return LossOutput(losses.mean(), metrics)
