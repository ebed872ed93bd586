"""EXO: Efficient Exact Optimization of alignment, pairwise form.

Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment", ICML 2024,
arXiv:2402.00856, for K = 2 completions. EXO minimises the reverse KL from the
policy's preference distribution over the pair,

    q = softmax(β ρ_w, β ρ_l) = (σ(βh), σ(-βh)),   h = ρ_w - ρ_l,
    ρ = log π(y|x) - log π_ref(y|x),

to the preference labels' distribution p = (1 - ε, ε), with label smoothing ε > 0:

    L = KL(q ‖ p) = σ(βh) [log σ(βh) - log(1 - ε)] + σ(-βh) [log σ(-βh) - log ε]

The reverse KL is mode-seeking: where DPO's forward KL spreads probability over both
completions, EXO concentrates on the preferred one. ε must be > 0 (log ε), and < 0.5 so
the label still prefers y_w. The loss is 0 exactly when σ(βh) = 1 - ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective


def exo_loss(chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor, *, beta: float,
             label_smoothing: float) -> torch.Tensor:
    """Per-pair pairwise EXO loss on the log-ratios ρ_w, ρ_l."""
    h = beta * (chosen_ratio - rejected_ratio)
    log_q_w, log_q_l = F.logsigmoid(h), F.logsigmoid(-h)
    return log_q_w.exp() * (log_q_w - math.log1p(-label_smoothing)) \
        + log_q_l.exp() * (log_q_l - math.log(label_smoothing))


class EXO(PairwiseRatioObjective):
    """EXO on preference pairs: reverse KL to label-smoothed preferences."""

    description = "EXO: reverse KL from the policy's pair preference to the smoothed label"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the implicit reward β log π/π_ref."""
        label_smoothing: float = 1e-3
        """ε: the label's probability for the dispreferred completion, in (0, 0.5)."""

    def __init__(self, config: Config):
        super().__init__(config)
        if not 0.0 < config.label_smoothing < 0.5:
            raise ValueError("objective.label_smoothing must be in (0, 0.5) for exo (the "
                             "loss takes log ε), e.g. objective.label_smoothing=0.001; got "
                             f"{config.label_smoothing}")

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        c = self.config
        return exo_loss(chosen_ratio, rejected_ratio, beta=c.beta,
                        label_smoothing=c.label_smoothing), {}
