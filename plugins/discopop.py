"""DiscoPOP: the log-ratio modulated loss (LRML) found by LLM-driven objective discovery.

Lu, Holt, Fanconi, Chan, Foerster, van der Schaar and Lange, "Discovering Preference
Optimization Algorithms with and for Large Language Models", NeurIPS 2024,
arXiv:2406.08414. With the DPO logit ρ = β [(log π(y_w) - log π_ref(y_w)) -
(log π(y_l) - log π_ref(y_l))], DiscoPOP blends DPO's logistic loss with an exponential
loss, weighted by a sigmoid of the logit at temperature τ:

    L = (1 - σ(ρ/τ)) · (-log σ(ρ)) + σ(ρ/τ) · exp(-ρ)

For ρ well below 0 it is DPO's loss; for ρ well above 0 the exponential, which vanishes
faster. The exponential term is computed as exp(log σ(ρ/τ) - ρ): the same number, but
finite where exp(-ρ) alone overflows (a pair very far on the wrong side), where the
product σ(ρ/τ) · exp(-ρ) would be 0 · ∞ = NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import ObjectiveConfig, require_positive
from prefopt.plugins._pairwise import PairwiseRatioObjective


def discopop_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *, beta: float,
                  tau: float) -> torch.Tensor:
    """Per-pair log-ratio modulated loss on the log-ratios ρ_w, ρ_l."""
    logits = beta * (chosen_ratio - rejected_ratio)
    modulation = torch.sigmoid(logits / tau)
    exponential = torch.exp(F.logsigmoid(logits / tau) - logits)  # σ(ρ/τ) · exp(-ρ)
    return (1 - modulation) * -F.logsigmoid(logits) + exponential


class DiscoPOP(PairwiseRatioObjective):
    """DiscoPOP's log-ratio modulated loss: logistic and exponential losses blended."""

    description = "DiscoPOP: logistic and exponential losses blended by σ(logit/τ)"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.05
        """β: scale of the implicit reward β log π/π_ref."""
        tau: float = 0.05
        """τ: temperature of the blend σ(ρ/τ); small τ switches sharply at ρ = 0."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "tau")

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        c = self.config
        return discopop_loss(chosen_ratio, rejected_ratio, beta=c.beta, tau=c.tau), {}
