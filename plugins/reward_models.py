"""Reward models: a scalar head r(x, y) on a transformers backbone, trained on preferences.

- `reward_bt`: Bradley–Terry on pairs (Bradley & Terry 1952; Ouyang et al. 2022,
  arXiv:2203.02155, eq. 1), with an optional per-record margin m (Touvron et al. 2023,
  Llama 2, arXiv:2307.09288, eq. 2) and optional reward centring (Eisenstein et al. 2023,
  arXiv:2312.09244), which keeps rewards near zero mean:

      L = -log σ(r(x, y_w) - r(x, y_l) - m) + η (r(x, y_w) + r(x, y_l))²

- `reward_pl`: the K-wise maximum-likelihood (Plackett–Luce) loss on rankings, as used for
  Starling-7B's reward model (Zhu et al. 2023, "Starling-7B"; Zhu, Jordan & Jiao,
  arXiv:2301.11270): the log-sum-exp in each position's denominator runs over the items
  ranked at or below it (`plackett_luce_nll`, ties by Breslow's rule). At K = 2 without
  ties it is Bradley–Terry.

A trained reward model is exported like a policy (`<output_dir>/policy`);
`prefopt.steer.scorer.RewardScorer.load(path)` loads it and scores (prompt, completion) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    PairwiseScores,
    RankedScores,
    preference_metrics,
)
from prefopt.plugins.kwise import plackett_luce_nll, ranking_metrics


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margins: torch.Tensor | None = None, center_coefficient: float = 0.0
                       ) -> torch.Tensor:
    """Per-pair loss -log σ(r_w - r_l - m) + η (r_w + r_l)²."""
    difference = chosen - rejected
    if margins is not None:
        difference = difference - margins
    return -F.logsigmoid(difference) + center_coefficient * (chosen + rejected) ** 2


def _spread(name: str, scores: torch.Tensor) -> dict[str, torch.Tensor]:
    scores = scores.detach()
    return {f"{name}/reward_mean": scores.mean(),
            f"{name}/reward_std": scores.std() if scores.numel() > 1 else scores.new_zeros(())}


class RewardBT(Objective):
    """Scalar-head reward model trained with Bradley–Terry on preference pairs."""

    description = "reward model: Bradley-Terry on pairs, optional margins and centring"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        use_margins: bool = True
        """Subtract each record's `margin` field (when present) from the reward gap."""
        center_coefficient: float = 0.0
        """η of reward centring: penalise (r_w + r_l)²; 0 disables it (try 0.01)."""

    def needs(self) -> Needs:
        return Needs(reference=False, reward_model=True)

    def loss(self, inputs: PairwiseScores) -> LossOutput:
        c = self.config
        losses = bradley_terry_loss(inputs.chosen, inputs.rejected,
                                    inputs.margins if c.use_margins else None,
                                    c.center_coefficient)
        metrics = preference_metrics(inputs.chosen, inputs.rejected)
        metrics.update(_spread(c.name or "reward_bt",
                               torch.cat([inputs.chosen, inputs.rejected])))
        return LossOutput(losses.mean(), metrics)


class RewardPL(Objective):
    """Scalar-head reward model trained with the K-wise Plackett–Luce loss on rankings."""

    description = "reward model: K-wise Plackett-Luce maximum likelihood on rankings"
    batch_format = BatchFormat.RANKED

    @dataclass
    class Config(ObjectiveConfig):
        center_coefficient: float = 0.0
        """η of reward centring: penalise the squared mean reward of each prompt's items."""

    def needs(self) -> Needs:
        return Needs(reference=False, reward_model=True)

    def loss(self, inputs: RankedScores) -> LossOutput:
        losses = plackett_luce_nll(inputs.scores, inputs.ranks, inputs.group)
        if self.config.center_coefficient:
            n = losses.shape[0]
            zeros = inputs.scores.new_zeros(n)
            sums = zeros.index_add(0, inputs.group, inputs.scores)
            counts = zeros.index_add(0, inputs.group, torch.ones_like(inputs.scores))
            losses = losses + self.config.center_coefficient * (sums / counts) ** 2
        metrics = ranking_metrics(inputs.scores, inputs.ranks, inputs.group)
        metrics.update(_spread(self.config.name or "reward_pl", inputs.scores))
        return LossOutput(losses.mean(), metrics)
