"""KTO: Kahneman-Tversky Optimization, on unpaired desirable / undesirable completions.

Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", ICML 2024,
arXiv:2402.01306, eq. 8. With the implied reward r(x, y) = log π(y|x) / π_ref(y|x) and a
reference point z₀ = KL(π(y'|x) ‖ π_ref(y'|x)):

    v(x, y) = λ_D σ(β (r(x, y) - z₀))   if y is desirable
              λ_U σ(β (z₀ - r(x, y)))   if y is undesirable
    L       = E[λ_y - v(x, y)] = E[λ_y (1 - σ(±β (r - z₀)))]

z₀ is estimated as the paper does: the mean log-ratio of mismatched pairs (x_i, y_j), i ≠ j,
formed inside the batch (the module pairs each prompt with the next record's completion),
averaged across devices, clamped at 0 and detached: no gradient flows through it.

The paper recommends weights with λ_D n_D / (λ_U n_U) in [1, 4/3] for n_D desirable and
n_U undesirable examples; `check_data` warns when the training data leave that range.
`rewards/accuracies` for unpaired data: the share of completions on the right side of the
reference point (desirable: β r > β z₀; undesirable: β r < β z₀; exactly at it: ½).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    UnpairedLogps,
    require_positive,
)

RECOMMENDED_BALANCE = (1.0, 4.0 / 3.0)


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor,
             kl_ratio: torch.Tensor, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example KTO loss, implicit rewards β r, and the reference point z₀.

    `kl_ratio` is the (already device-averaged) mean log-ratio of mismatched pairs.
    """
    z0 = kl_ratio.detach().clamp(min=0)
    ratio = logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    return torch.where(labels, desirable, undesirable), beta * ratio, z0


def class_balance(n_desirable: int, n_undesirable: int, desirable_weight: float,
                  undesirable_weight: float) -> float:
    """λ_D n_D / (λ_U n_U); infinite when there is no undesirable example."""
    denominator = undesirable_weight * n_undesirable
    return float("inf") if denominator == 0 else desirable_weight * n_desirable / denominator


class KTO(Objective):
    """KTO on unpaired records {prompt, completion, label}."""

    description = "KTO prospect-theoretic loss on unpaired desirable/undesirable completions"
    batch_format = BatchFormat.UNPAIRED

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: how sharply value saturates around the reference point; larger keeps π
        closer to π_ref."""
        desirable_weight: float = 1.0
        """λ_D: weight of desirable examples."""
        undesirable_weight: float = 1.0
        """λ_U: weight of undesirable examples."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta", "desirable_weight", "undesirable_weight")

    def needs(self) -> Needs:
        return Needs(reference=True, mismatched_pairs=True)

    def check_data(self, train_groups: list) -> None:
        n_desirable = sum(1 for g in train_groups if g.label)
        n_undesirable = len(train_groups) - n_desirable
        c = self.config
        balance = class_balance(n_desirable, n_undesirable, c.desirable_weight,
                                c.undesirable_weight)
        low, high = RECOMMENDED_BALANCE
        if not low <= balance <= high:
            suggestion = (n_undesirable * c.undesirable_weight / max(n_desirable, 1))
            warnings.warn(
                f"KTO: λ_D·n_D / (λ_U·n_U) = {c.desirable_weight}·{n_desirable} / "
                f"({c.undesirable_weight}·{n_undesirable}) = {balance:.3g}, outside the range "
                f"[1, 4/3] the KTO paper recommends; e.g. objective.desirable_weight="
                f"{suggestion:.3g} gives 1.", stacklevel=2)

    def loss(self, inputs: UnpairedLogps) -> LossOutput:
        c = self.config
        losses, rewards, z0 = kto_loss(inputs.logps, inputs.ref_logps, inputs.labels,
                                       inputs.kl_ratio, beta=c.beta,
                                       desirable_weight=c.desirable_weight,
                                       undesirable_weight=c.undesirable_weight)
        labels = inputs.labels
        rewards = rewards.detach()
        threshold = c.beta * z0
        right_side = torch.where(labels, rewards > threshold, rewards < threshold).float() \
            + 0.5 * (rewards == threshold).float()
        metrics = {"rewards/chosen": rewards[labels], "rewards/rejected": rewards[~labels],
                   "rewards/accuracies": right_side, "kto/z0": z0}
        if labels.any() and (~labels).any():
            metrics["rewards/margins"] = rewards[labels].mean() - rewards[~labels].mean()
        return LossOutput(losses.mean(), metrics)
