"""ORPO: Odds Ratio Preference Optimization, reference-free.

Hong, Lee and Thorne, "ORPO: Monolithic Preference Optimization without Reference Model",
EMNLP 2024, arXiv:2403.07691, eqs. 6 and 7. With the length-averaged log-likelihood
ℓ(y) = (1/|y|) Σ_t log π(y_t | x, y_<t) and the odds odds(y) = P(y) / (1 - P(y)) where
P(y) = exp ℓ(y):

    log OR = log odds(y_w) - log odds(y_l)
           = (ℓ_w - ℓ_l) - (log(1 - e^ℓ_w) - log(1 - e^ℓ_l))
    L_OR   = -log σ(log OR)
    L      = L_SFT + λ L_OR

L_SFT is the negative log-likelihood of the preferred completions, averaged over their
tokens (every token of the batch weighing the same). SFT and preference alignment happen
in one stage, without a reference model. log(1 - e^ℓ) is computed stably for ℓ near 0 and
near -∞; ℓ is capped just below 0 (-1e-6) so that a completion of average token
probability 1, or an empty one, gives a finite loss and gradient instead of log 0.

The config calls λ `beta`, as every prefopt objective names its main strength, so that
`objective.beta=...` works across objectives. The `rewards/*` metrics are β ℓ(y);
`orpo/log_odds_ratio` is log OR per pair, `orpo/nll` the L_SFT term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    PairwiseLogps,
    preference_metrics,
    require_positive,
)
from prefopt.plugins.dpo import per_token_mean
from prefopt.plugins.sft import chosen_nll

# ℓ is capped here: log(1 - e^ℓ) is -∞ at ℓ = 0.
_MAX_MEAN_LOGP = -1e-6


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0: log1p(-e^x) loses nothing for x well below 0, log(-expm1(x))
    nothing near 0; the switch at -log 2 is where both are accurate (Mächler, "Accurately
    Computing log(1 - exp(-|a|))", 2012)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def log_odds_ratio(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor) -> torch.Tensor:
    """log odds(y_w) - log odds(y_l) from the length-averaged log-likelihoods ℓ_w, ℓ_l."""
    chosen_mean = chosen_mean.clamp(max=_MAX_MEAN_LOGP)
    rejected_mean = rejected_mean.clamp(max=_MAX_MEAN_LOGP)
    return (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))


def odds_ratio_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair L_OR = -log σ(log OR), and log OR."""
    log_or = log_odds_ratio(chosen_mean, rejected_mean)
    return -F.logsigmoid(log_or), log_or


class ORPO(Objective):
    """ORPO: NLL of the preferred completions plus λ times the odds-ratio loss."""

    description = "ORPO: chosen NLL + λ · odds-ratio loss on length-averaged log-probs; no ref"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """λ of the paper: weight of the odds-ratio term against the NLL (the paper: 0.1)."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")

    def needs(self) -> Needs:
        return Needs(reference=False)

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        beta = self.config.beta
        chosen_mean = per_token_mean(inputs.chosen, inputs.chosen_tokens)
        rejected_mean = per_token_mean(inputs.rejected, inputs.rejected_tokens)
        or_losses, log_or = odds_ratio_loss(chosen_mean, rejected_mean)
        nll = chosen_nll(inputs)
        metrics = preference_metrics(beta * chosen_mean, beta * rejected_mean)
        metrics["orpo/log_odds_ratio"] = log_or.detach()
        metrics["orpo/nll"] = nll.detach()
        return LossOutput(nll + beta * or_losses.mean(), metrics)
