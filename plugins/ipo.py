"""IPO: Identity Preference Optimisation.

Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
Preferences", AISTATS 2024, arXiv:2310.12036, eq. 17. IPO regresses the log-likelihood
ratio margin onto a fixed target instead of pushing it to infinity, which DPO does when
preferences are deterministic:

    h = log π(y_w|x)/π_ref(y_w|x) - log π(y_l|x)/π_ref(y_l|x)
    L = (h - 1/(2τ))²

with log-probabilities averaged over the completion's tokens, as the authors do in their
experiments (summed log-probs make the target scale with length). τ is the regulariser:
a small τ means a large target margin. The config calls it `beta`, the name every
objective uses for its regularisation strength, so `objective.beta=...` works across
objectives. Implicit rewards for the metrics are τ times the per-token log ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Objective,
    ObjectiveConfig,
    PairwiseLogps,
    preference_metrics,
    require_positive,
)
from prefopt.plugins.dpo import per_token_mean


def ipo_loss(chosen: torch.Tensor, rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *, tau: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair IPO loss on (already length-averaged) log-probs, and implicit rewards.

    Returns (losses [B], chosen_rewards [B], rejected_rewards [B]).
    """
    chosen_ratio = chosen - ref_chosen
    rejected_ratio = rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    losses = (h - 1.0 / (2.0 * tau)) ** 2
    return losses, tau * chosen_ratio, tau * rejected_ratio


class IPO(Objective):
    """Identity Preference Optimisation: squared loss around a target margin 1/(2τ)."""

    description = "IPO squared loss around 1/(2τ) on length-averaged log-ratio margins"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """τ of the IPO paper: the target margin is 1/(2τ); smaller τ, larger margin."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        losses, chosen_rewards, rejected_rewards = ipo_loss(
            per_token_mean(inputs.chosen, inputs.chosen_tokens),
            per_token_mean(inputs.rejected, inputs.rejected_tokens),
            per_token_mean(inputs.ref_chosen, inputs.chosen_tokens),
            per_token_mean(inputs.ref_rejected, inputs.rejected_tokens),
            tau=self.config.beta)
        metrics = preference_metrics(chosen_rewards, rejected_rewards)
        metrics["ipo/target_margin"] = torch.tensor(1.0 / (2.0 * self.config.beta),
                                                      dtype=torch.float32)
        return LossOutput(losses.mean(), metrics)
