"""DPO: Direct Preference Optimization, with conservative label smoothing (cDPO).

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model", NeurIPS 2023, arXiv:2305.18290, eq. 7. For a prompt x with preferred completion
y_w and dispreferred y_l, the implicit reward is r(x, y) = β log π(y|x) / π_ref(y|x) and

    h    = r(x, y_w) - r(x, y_l)
         = β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))]
    L    = -log σ(h)

cDPO (Mitchell, "A note on DPO with noisy preferences & relationship to IPO", 2023) assumes
each label is flipped with probability ε and minimises the expected loss under that noise:

    L_ε  = -(1 - ε) log σ(h) - ε log σ(-h)

At ε = 0 this is DPO. Options:
- `length_normalize`: use the mean log-prob per completion token instead of the sum, so
  longer completions do not get larger rewards by length alone;
- `reference_free`: π_ref ≡ 1 (log π_ref = 0); no reference model is loaded.
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
    PairwiseLogps,
    preference_metrics,
    require_positive,
)


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor,
             ref_chosen: torch.Tensor | None, ref_rejected: torch.Tensor | None,
             *, beta: float, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair cDPO loss and implicit rewards. Reference log-probs of None mean 0.

    Returns (losses [B], chosen_rewards [B], rejected_rewards [B]).
    """
    chosen_ratio = chosen - ref_chosen if ref_chosen is not None else chosen
    rejected_ratio = rejected - ref_rejected if ref_rejected is not None else rejected
    h = beta * (chosen_ratio - rejected_ratio)
    # logsigmoid is the numerically stable log σ: no overflow for large |h|.
    losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, beta * chosen_ratio, beta * rejected_ratio


def per_token_mean(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Σ log-probs / number of tokens, with empty completions counted as one token."""
    return logps / tokens.clamp(min=1)


class DPO(Objective):
    """Direct Preference Optimization (sigmoid loss), with cDPO label smoothing."""

    description = "DPO sigmoid loss on implicit-reward margins; cDPO label smoothing"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: strength of the implicit KL penalty; larger keeps π closer to π_ref."""
        label_smoothing: float = 0.0
        """ε of cDPO: assumed probability that a preference label is flipped, in [0, 0.5)."""
        length_normalize: bool = False
        """Use mean per-token log-probs instead of sums over the completion."""
        reference_free: bool = False
        """Take log π_ref = 0 and load no reference model."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")
        if not 0.0 <= config.label_smoothing < 0.5:
            raise ValueError("objective.label_smoothing must be in [0, 0.5), "
                             f"got {config.label_smoothing}")

    def needs(self) -> Needs:
        return Needs(reference=not self.config.reference_free)

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        c = self.config
        chosen, rejected = inputs.chosen, inputs.rejected
        ref_chosen, ref_rejected = inputs.ref_chosen, inputs.ref_rejected
        if c.reference_free:
            ref_chosen = ref_rejected = None
        if c.length_normalize:
            chosen = per_token_mean(chosen, inputs.chosen_tokens)
            rejected = per_token_mean(rejected, inputs.rejected_tokens)
            if ref_chosen is not None:
                ref_chosen = per_token_mean(ref_chosen, inputs.chosen_tokens)
                ref_rejected = per_token_mean(ref_rejected, inputs.rejected_tokens)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected,
            beta=c.beta, label_smoothing=c.label_smoothing)
        return LossOutput(losses.mean(), preference_metrics(chosen_rewards, rejected_rewards))
