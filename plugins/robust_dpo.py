"""Robust DPO: an unbiased DPO loss under preference labels flipped with probability ε.

Chowdhury, Kini and Natarajan, "Provably Robust DPO: Aligning Language Models with Noisy
Feedback", ICML 2024, arXiv:2403.00409, their de-biased loss L̂_ε. With the DPO margin
h = β (ρ_w - ρ_l), ρ = log π(y|x) - log π_ref(y|x), and ℓ(h) = -log σ(h):

    L_ε = [(1 - ε) ℓ(h) - ε ℓ(-h)] / (1 - 2ε)

Its expectation over labels flipped with probability ε is the clean DPO loss, so the noise
does not bias the gradient. cDPO (`dpo` with `label_smoothing`) adds the flipped-label term
instead of subtracting it: that is a different, conservative loss, not this one. The loss
is not bounded below: once a pair is confidently right, -ε ℓ(-h) keeps rewarding a larger
margin, linearly in h. ε = 0 is DPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective


def robust_dpo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *,
                    beta: float, label_noise: float) -> torch.Tensor:
    """Per-pair de-biased DPO loss on the log-ratios ρ_w, ρ_l."""
    h = beta * (chosen_ratio - rejected_ratio)
    return ((1.0 - label_noise) * -F.logsigmoid(h) - label_noise * -F.logsigmoid(-h)) \
        / (1.0 - 2.0 * label_noise)


class RobustDPO(PairwiseRatioObjective):
    """Provably robust DPO: the DPO loss de-biased for labels flipped with probability ε."""

    description = "robust DPO: DPO loss de-biased for preference labels flipped with rate ε"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: strength of the implicit KL penalty, as in DPO."""
        label_noise: float = 0.1
        """ε: the assumed probability that a preference label is flipped, in [0, 0.5)."""

    def __init__(self, config: Config):
        super().__init__(config)
        if not 0.0 <= config.label_noise < 0.5:
            raise ValueError("objective.label_noise must be in [0, 0.5) (at 0.5 labels are "
                             f"coin flips and the loss is undefined), got {config.label_noise}")

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        c = self.config
        return robust_dpo_loss(chosen_ratio, rejected_ratio, beta=c.beta,
                               label_noise=c.label_noise), {}
