"""K-wise preference optimisation: DPO with a Plackett–Luce model over K ranked completions.

Rafailov et al., "Direct Preference Optimization", arXiv:2305.18290, appendix A.3: with
implicit rewards r_i = β log π(y_i|x) / π_ref(y_i|x) and a ranking τ of K completions
(τ(1) best), the Plackett–Luce likelihood gives

    L = -Σ_{k=1}^{K} log [ exp(r_τ(k)) / Σ_{j=k}^{K} exp(r_τ(j)) ]

the listwise generalisation of DPO: at K = 2 it is -log σ(r_1 - r_2), DPO exactly.

Ties (equal ranks) follow Breslow's rule: every item's denominator runs over all items of
its prompt ranked at or below it, tied ones included,

    L = -Σ_i [ r_i - log Σ_{j: rank_j ≥ rank_i} exp(r_j) ]

which reduces to the formula above without ties (the last item's term is 0), depends
only on the ranks (never on the order in which items are listed) and asks nothing of
tied items but to be equally likely. Ranks are integers, lower is better; K may differ
from prompt to prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Objective,
    ObjectiveConfig,
    RankedLogps,
    require_positive,
)


def plackett_luce_nll(rewards: torch.Tensor, ranks: torch.Tensor, group: torch.Tensor
                      ) -> torch.Tensor:
    """Per-group negative log-likelihood of the rankings, Breslow ties. Returns [G]."""
    same_group = group[:, None] == group[None, :]
    at_or_below = same_group & (ranks[None, :] >= ranks[:, None])  # [i, j]: j is no better
    masked = rewards[None, :].masked_fill(~at_or_below, float("-inf"))
    terms = rewards - torch.logsumexp(masked, dim=1)
    n_groups = int(group.max()) + 1
    return -torch.zeros(n_groups, dtype=terms.dtype, device=terms.device).index_add(0, group,
                                                                                     terms)


def ranking_metrics(rewards: torch.Tensor, ranks: torch.Tensor, group: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    """rewards/* for rankings, per group: the best-ranked items as `chosen`, the worst as
    `rejected`, and the share of correctly ordered pairs (ties in reward count ½) as
    `accuracies`; at K = 2 these are the pairwise metrics.

    A prompt whose completions all share one rank (or that has a single completion) holds
    no ordered pair: it has no accuracy, and is left out of `accuracies`, which holds one
    value per prompt with an ordered pair, in group order ([G'], G' ≤ G). So a policy
    equal to its reference scores exactly ½, whatever the ties."""
    rewards = rewards.detach()
    n = int(group.max()) + 1
    same = group[:, None] == group[None, :]
    better = same & (ranks[:, None] < ranks[None, :])  # [i, j]: i ranked above j
    right = (rewards[:, None] > rewards[None, :]).float() + \
        0.5 * (rewards[:, None] == rewards[None, :]).float()

    def per_group_sum(values):
        return torch.zeros(n, dtype=rewards.dtype, device=rewards.device).index_add(
            0, group, values.to(rewards.dtype))

    pairs = per_group_sum(better.sum(1))
    correct = per_group_sum((right * better).sum(1))

    def mean_where(mask):
        return per_group_sum(rewards * mask) / per_group_sum(mask)

    top = torch.full((n,), torch.iinfo(ranks.dtype).max, device=ranks.device,
                     dtype=ranks.dtype).scatter_reduce(0, group, ranks, "amin")
    bottom = torch.full_like(top, torch.iinfo(ranks.dtype).min).scatter_reduce(0, group, ranks,
                                                                              "amax")
    chosen, rejected = mean_where(ranks == top[group]), mean_where(ranks == bottom[group])
    return {"rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (correct / pairs.clamp(min=1))[pairs > 0]}


class KWise(Objective):
    """Plackett–Luce DPO over K ranked completions per prompt."""

    description = "Plackett-Luce (listwise) DPO over K ranked completions; K=2 is DPO"
    batch_format = BatchFormat.RANKED

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β of the implicit rewards β log π/π_ref, as in DPO."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")

    def loss(self, inputs: RankedLogps) -> LossOutput:
        rewards = self.config.beta * (inputs.logps - inputs.ref_logps)
        losses = plackett_luce_nll(rewards, inputs.ranks, inputs.group)
        return LossOutput(losses.mean(), ranking_metrics(rewards, inputs.ranks, inputs.group))
