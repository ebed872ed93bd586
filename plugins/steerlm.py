"""SteerLM: attribute-conditioned supervised fine-tuning, and the attribute model.

- `steerlm` (Dong et al. 2023, "SteerLM: Attribute Conditioned SFT as an (User-Steerable)
  Alternative to RLHF", arXiv:2310.05344): supervised training on responses y labelled
  with attribute values a, written into the assistant turn before the response
  (`quality:4,order:1,length:3`, see prefopt.data.attributes). The loss is the negative
  log-likelihood of the response tokens only, the attribute line being context:

      L = - Σ_i Σ_t log π(y_i,t | x_i, a_i, y_i,<t) / Σ_i |y_i|        (token average)
      L = - (1/B) Σ_i Σ_t log π(y_i,t | x_i, a_i, y_i,<t) / |y_i|       (sequence average)

  At generation time, asking for attribute values steers the answer. With
  `data.attribute_dropout` some examples show an empty attribute line, so the model also
  answers unconditioned (classifier-free-guidance style conditioning dropout).

- `attribute_model`: a regression head with one output per attribute on a transformers
  backbone (the reward-model head of `reward_bt`, with A outputs), as HelpSteer2's
  multi-attribute reward model (Wang et al. 2024, arXiv:2406.08673). Each attribute is
  scaled to [0, 1] by its schema range, and the mean squared error runs over the values
  the records give (a missing value is masked out, not treated as zero):

      L = Σ_i Σ_a m_ia (f_a(x_i, y_i) - v_ia)² / Σ_i Σ_a m_ia

  A trained attribute model labels unlabelled responses: `prefopt-label` and
  `prefopt.steer.AttributeLabeler`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from prefopt.objective import (
    AttributeScores,
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    ResponseLogps,
)


class Average(str, enum.Enum):
    token = "token"  # every response token weighs the same (longer answers weigh more)
    sequence = "sequence"  # every response weighs the same


@dataclass
class SteerLMConfig(ObjectiveConfig):
    average: Average = Average.token
    """How the NLL averages: over all response tokens of the batch, or per response."""


def response_nll(logps: torch.Tensor, tokens: torch.Tensor, average: Average) -> torch.Tensor:
    """Negative log-likelihood of the responses, averaged as `average` says."""
    tokens = tokens.to(logps.dtype)
    if Average(average) == Average.token:
        return -logps.sum() / tokens.sum().clamp(min=1)
    return (-logps / tokens.clamp(min=1)).mean()


class SteerLM(Objective):
    """SteerLM attribute-conditioned SFT: NLL of responses given their attribute line."""

    batch_format = BatchFormat.ATTRIBUTED
    description = "SteerLM: attribute-conditioned SFT on {prompt, response, attributes}"
    Config = SteerLMConfig
    monitor = ("loss", "min")

    def needs(self) -> Needs:
        return Needs(reference=False)

    def loss(self, inputs: ResponseLogps) -> LossOutput:
        loss = response_nll(inputs.logps, inputs.tokens, self.config.average)
        per_token = -inputs.logps.detach() / inputs.tokens.clamp(min=1)
        return LossOutput(loss, {"steerlm/nll_per_token": per_token,
                                 "steerlm/response_tokens": inputs.tokens.float()})


@dataclass
class AttributeModelConfig(ObjectiveConfig):
    pass


def masked_mse(predictions: torch.Tensor, targets: torch.Tensor, present: torch.Tensor
               ) -> torch.Tensor:
    """Mean of (prediction - target)² over the entries present; 0 (with a gradient of 0)
    when the batch gives no value at all."""
    squared = (predictions - targets.to(predictions.dtype)) ** 2
    mask = present.to(predictions.dtype)
    return (squared * mask).sum() / mask.sum().clamp(min=1)


class AttributeModel(Objective):
    """Multi-attribute regression head (masked MSE) that labels responses."""

    batch_format = BatchFormat.ATTRIBUTED
    description = "attribute model: one regression output per attribute, masked MSE"
    Config = AttributeModelConfig
    monitor = ("loss", "min")

    def needs(self) -> Needs:
        return Needs(reference=False, reward_model=True)

    def loss(self, inputs: AttributeScores) -> LossOutput:
        loss = masked_mse(inputs.predictions, inputs.targets, inputs.present)
        metrics = {}
        error = (inputs.predictions.detach() - inputs.targets) * inputs.scale  # in units
        for a, name in enumerate(inputs.names):
            rows = inputs.present[:, a]
            # Metric values are per-example; an attribute absent from the batch is skipped.
            metrics[f"attributes/{name}/mae"] = error[rows, a].abs()
            metrics[f"attributes/{name}/accuracy"] = (error[rows, a].abs() < 0.5).to(error.dtype)
        return LossOutput(loss, metrics)
