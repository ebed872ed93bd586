"""APO: Anchored Preference Optimization, `zero` and `down` variants.

D'Oosterlinck, Xu, Develder, Demeester, Singh, Potts, Kiela and Mehri, "Anchored Preference
Optimization and Contrastive Revisions: Addressing Underspecification in Alignment",
arXiv:2408.06266, APO-zero and APO-down. With r(x, y) = β log π(y|x)/π_ref(y|x):

    zero:  L = (1 - σ(r_w)) + σ(r_l)
    down:  L = σ(r_w) + (1 - σ(r_w - r_l))

DPO only fixes the margin r_w - r_l; APO also says which way each likelihood should move,
anchored at the reference. `zero` raises the preferred response and lowers the other:
use it when the preferred outputs are better than what the model generates now. `down`
lowers both, the dispreferred one more: use it when even the preferred outputs are worse
than the model's own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective


class Variant(str, enum.Enum):
    zero = "zero"
    down = "down"


def apo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *, beta: float,
             variant: Variant) -> torch.Tensor:
    """Per-pair APO loss on the log-ratios ρ_w, ρ_l."""
    chosen, rejected = beta * chosen_ratio, beta * rejected_ratio
    if Variant(variant) == Variant.zero:
        return (1 - torch.sigmoid(chosen)) + torch.sigmoid(rejected)
    return torch.sigmoid(chosen) + (1 - torch.sigmoid(chosen - rejected))


class APO(PairwiseRatioObjective):
    """Anchored Preference Optimization (APO-zero or APO-down)."""

    description = "APO: anchored preference loss, variant zero (chosen up) or down (both down)"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the implicit reward β log π/π_ref."""
        variant: Variant = Variant.zero
        """zero: the preferred outputs beat the model's (raise y_w, lower y_l); down: they
        do not (lower both, y_l more)."""

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        c = self.config
        return apo_loss(chosen_ratio, rejected_ratio, beta=c.beta, variant=c.variant), {}
