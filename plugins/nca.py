"""NCA: Noise Contrastive Alignment, pairwise form.

Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
NeurIPS 2024, arXiv:2402.05369, the NCA loss for K = 2 responses with a hard preference.
With r(x, y) = β log π(y|x) / π_ref(y|x):

    L = -log σ(r(x, y_w)) - ½ log σ(-r(x, y_w)) - ½ log σ(-r(x, y_l))

Unlike DPO, which only moves the margin r_w - r_l, each response is classified against
noise on its own: the preferred one is pushed up in absolute terms, so its likelihood does
not fall together with the dispreferred one's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective


def nca_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *, beta: float
             ) -> torch.Tensor:
    """Per-pair NCA loss on the log-ratios ρ_w, ρ_l."""
    chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


class NCA(PairwiseRatioObjective):
    """Noise Contrastive Alignment on preference pairs."""

    description = "NCA: each response's implicit reward classified against noise (pairwise)"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the implicit reward β log π/π_ref."""

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        return nca_loss(chosen_ratio, rejected_ratio, beta=self.config.beta), {}
