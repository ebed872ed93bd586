"""SPPO: Self-Play Preference Optimization, hard-label form.

Wu, Sun, Yuan, Ji, Yang and Gu, "Self-Play Preference Optimization for Language Model
Alignment", arXiv:2405.00675, the square loss of their Algorithm 1. SPPO
regresses each response's log-ratio to the reference (the previous iterate) onto
η (P(y ≻ π | x) - ½), where P is the probability that y beats the current policy. With
hard labels, P = 1 for the preferred response and 0 for the other; η = 1/β:

    L = (log π(y_w|x)/π_ref(y_w|x) - 1/(2β))² + (log π(y_l|x)/π_ref(y_l|x) + 1/(2β))²

Each log-ratio is pulled to its own target, ±1/(2β), not only their difference (compare
IPO, which regresses the margin). The soft form, with P estimated by a preference model
over several samples, needs those estimates in the data and is not implemented here.
Log-ratios are summed over the completion's tokens, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective


def sppo_hard_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *, beta: float
                   ) -> torch.Tensor:
    """Per-pair hard-label SPPO loss on the log-ratios ρ_w, ρ_l."""
    target = 1.0 / (2.0 * beta)
    return (chosen_ratio - target) ** 2 + (rejected_ratio + target) ** 2


class SPPO(PairwiseRatioObjective):
    """Self-Play Preference Optimization with hard win probabilities (1 and 0)."""

    description = "SPPO (hard labels): log-ratios regressed onto ±1/(2β)"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β = 1/η of the paper: the preferred log-ratio's target is +1/(2β), the other's
        -1/(2β)."""

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        beta = self.config.beta
        return sppo_hard_loss(chosen_ratio, rejected_ratio, beta=beta), \
            {"sppo/target": torch.tensor(1.0 / (2.0 * beta), dtype=torch.float32)}
