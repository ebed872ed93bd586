"""What the pairwise log-ratio objectives share: everything but the per-pair function.

Robust DPO, NCA, APO, SPPO, EXO, DiscoPOP and AOT all read the same two numbers per pair,
the policy-to-reference log-ratios

    ρ_w = log π(y_w|x) - log π_ref(y_w|x),    ρ_l = log π(y_l|x) - log π_ref(y_l|x),

and log the same implicit rewards β ρ_w, β ρ_l. Only the loss on them differs. Each is
still its own objective class with its own Config (see docs/objectives.md for why): a
subclass declares `Config` (with a `beta` field) and `pair_losses`, and this base class
does the rest.
"""

from __future__ import annotations

import abc

import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    PairwiseLogps,
    preference_metrics,
    require_positive,
)


def log_ratios(inputs: PairwiseLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """(ρ_w, ρ_l): summed policy log-probs minus the reference's, per pair."""
    return inputs.chosen - inputs.ref_chosen, inputs.rejected - inputs.ref_rejected


def label_smoothed_logistic(logits: torch.Tensor, smoothing: float) -> torch.Tensor:
    """-(1 - ε) log σ(z) - ε log σ(-z): the logistic loss on a label flipped with
    probability ε."""
    return -(1.0 - smoothing) * torch.nn.functional.logsigmoid(logits) \
        - smoothing * torch.nn.functional.logsigmoid(-logits)


class PairwiseRatioObjective(Objective):
    """A pairwise objective on the log-ratios (ρ_w, ρ_l) with a reference model."""

    batch_format = BatchFormat.PAIRWISE

    def __init__(self, config):
        super().__init__(config)
        require_positive(config, "beta")

    def needs(self) -> Needs:
        return Needs(reference=True)

    @abc.abstractmethod
    def pair_losses(self, chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor,
                    inputs: PairwiseLogps) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Losses [B] from ρ_w, ρ_l [B] (and, for the few that need more, the inputs they
        come from), and metrics under the objective's name. The loss is their mean."""

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        chosen_ratio, rejected_ratio = log_ratios(inputs)
        losses, own = self.pair_losses(chosen_ratio, rejected_ratio, inputs)
        beta = self.config.beta
        metrics = preference_metrics(beta * chosen_ratio, beta * rejected_ratio)
        metrics.update({key: value.detach() for key, value in own.items()})
        return LossOutput(losses.mean(), metrics)

