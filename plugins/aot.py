"""AOT: Alignment via Optimal Transport, `paired` and `unpaired` forms.

Melnyk, Mroueh, Belgodere, Rigotti, Nitsure, Yurochkin, Greenewald, Navratil and Ross,
"Distributional Preference Alignment of LLMs via Optimal Transport", NeurIPS 2024,
arXiv:2406.05882. AOT asks for first-order stochastic dominance of one distribution of
scores over another, not for a margin on each pair. In one dimension the optimal transport
plan between two empirical distributions matches them by rank, so the batch's scores are
sorted and compared quantile by quantile, with DPO's label-smoothed logistic loss ℓ_ε on
each matched difference (ρ = log π(y|x) - log π_ref(y|x), sort ascending, B pairs):

    paired:   u_i = log π(y_w,i) - log π(y_l,i),  v_i the same under π_ref
              L = (1/B) Σ_k ℓ_ε(β (sort(u)_k - sort(v)_k))
    unpaired: L = (1/B) Σ_k ℓ_ε(β (sort(ρ_w)_k - sort(ρ_l)_k))
    ℓ_ε(z) = -(1 - ε) log σ(z) - ε log σ(-z)

`paired` asks that the policy's margins log π(y_w) - log π(y_l) dominate the reference's;
`unpaired` that the chosen log-ratios dominate the rejected ones as two distributions, so
it never uses which y_l came with which y_w. Both sort within the batch: the loss depends
on the whole batch (on each device's own batch under data parallelism), not a sum of
per-pair terms; the loss is unchanged by reordering the pairs. The `rewards/*` metrics are
the usual per-pair β ρ, unsorted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from prefopt.objective import ObjectiveConfig
from prefopt.plugins._pairwise import PairwiseRatioObjective, label_smoothed_logistic


class Form(str, enum.Enum):
    paired = "paired"
    unpaired = "unpaired"


def aot_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float, form: Form,
             label_smoothing: float = 0.0) -> torch.Tensor:
    """The B quantile-matched losses (in sorted order, not the pairs' order)."""
    if Form(form) == Form.paired:
        policy, reference = chosen - rejected, ref_chosen - ref_rejected
    else:
        policy, reference = chosen - ref_chosen, rejected - ref_rejected
    delta = torch.sort(policy).values - torch.sort(reference).values
    return label_smoothed_logistic(beta * delta, label_smoothing)


class AOT(PairwiseRatioObjective):
    """Alignment via Optimal Transport: stochastic dominance by sorted quantiles."""

    description = "AOT: distributional dominance, logistic loss on batch-sorted quantiles"

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the sorted differences in the logistic loss."""
        form: Form = Form.paired
        """paired: the policy's log π(y_w) - log π(y_l) dominates the reference's;
        unpaired: the chosen log-ratios dominate the rejected ones."""
        label_smoothing: float = 0.0
        """ε of the logistic loss ℓ_ε, in [0, 0.5)."""

    def __init__(self, config: Config):
        super().__init__(config)
        if not 0.0 <= config.label_smoothing < 0.5:
            raise ValueError("objective.label_smoothing must be in [0, 0.5), "
                             f"got {config.label_smoothing}")

    def pair_losses(self, chosen_ratio, rejected_ratio, inputs):
        c = self.config
        return aot_loss(inputs.chosen, inputs.rejected, inputs.ref_chosen, inputs.ref_rejected,
                        beta=c.beta, form=c.form, label_smoothing=c.label_smoothing), {}
