"""SFT on the preferred completions of preference pairs.

Supervised fine-tuning by maximum likelihood, as the DPO paper does when no SFT model is
at hand (Rafailov et al., 2023, §4: "initialize π_ref by maximizing the likelihood of
preferred completions (x, y_w)"). For a batch of B pairs,

    average=token:     L = − Σ_b Σ_t log π(y_w,b,t | x_b, y_w,b,<t) / Σ_b |y_w,b|
    average=sequence:  L = − mean_b (1/|y_w,b|) Σ_t log π(y_w,b,t | x_b, y_w,b,<t)

A completion of 0 tokens (everything truncated away) adds nothing to either sum; a batch
whose completions hold no token at all has the loss 0, not 0/0. In the per-sequence
average such a completion counts as a 0.

The rejected completions are not trained on; they only feed the shared metrics, with the
reference-free implicit reward log π(y) (β = 1): `rewards/accuracies` is then the share of
pairs whose preferred completion the policy already finds more likely. It is the usual
first stage before DPO, and the warm start of the online objectives (REINFORCE, PPO).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    PairwiseLogps,
    preference_metrics,
)


def chosen_nll(inputs: PairwiseLogps) -> torch.Tensor:
    """-Σ log π(y_w|x) / Σ |y_w| over the batch: the per-token negative log-likelihood of
    the preferred completions, every token weighing the same (`average=token`; ORPO, CPO and
    SLiC add it to their losses). A batch without a completion token gives 0, not 0/0."""
    return -inputs.chosen.sum() / inputs.chosen_tokens.sum().clamp(min=1)


class Average(str, enum.Enum):
    token = "token"
    sequence = "sequence"


class SFT(Objective):
    """Maximum likelihood of the preferred completions (y_w) of preference pairs."""

    description = "SFT: negative log-likelihood of the chosen completions"
    batch_format = BatchFormat.PAIRWISE
    monitor = ("loss", "min")

    @dataclass
    class Config(ObjectiveConfig):
        average: Average = Average.token
        """token: every completion token weighs the same; sequence: every completion."""

    def needs(self) -> Needs:
        return Needs(reference=False)

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        tokens = inputs.chosen_tokens.clamp(min=1)  # per completion: 0 / 1 for an empty one
        if self.config.average == Average.token:
            loss = chosen_nll(inputs)
        else:
            loss = -(inputs.chosen / tokens).mean()
        metrics = preference_metrics(inputs.chosen, inputs.rejected)
        metrics["sft/nll_per_token"] = (-inputs.chosen / tokens).detach()
        return LossOutput(loss, metrics)
