"""SLiC-HF: Sequence Likelihood Calibration with Human Feedback (hinge form).

Zhao, Joshi, Liu, Khalman, Saleh and Liu, "SLiC-HF: Sequence Likelihood Calibration with
Human Feedback", arXiv:2305.10425, the rank-calibration loss with its cross-entropy
regulariser. A hinge pushes the preferred completion's log-likelihood at least δ
above the dispreferred one's, and λ times the negative log-likelihood of a target keeps
the model from drifting away from the data:

    L = max(0, δ - log π(y_w|x) + log π(y_l|x)) - λ log π(y_ref|x)

The paper's regularisation target y_ref is the SFT target; preference records carry none,
so prefopt uses the preferred completion y_w, averaged over its tokens (every token of the
batch weighing the same). There is no reference model: calibration works on the policy's
own likelihoods, summed over the completion's tokens.

`use_reference` replaces each log π(y|x) in the hinge by the log-ratio
log π(y|x) - log π_ref(y|x) and loads a reference model: that is the DPO-style hinge some
libraries (TRL's `hinge` loss type) call SLiC, which scales it by 1/δ (their β = 1/δ).
The `rewards/*` metrics are the hinge's scores (log π, or the log-ratios);
`slic/violations` is the share of pairs whose margin is below δ, `slic/nll` the
regulariser's NLL.
"""

from __future__ import annotations

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
    require_non_negative,
    require_positive,
)
from prefopt.plugins.sft import chosen_nll


def slic_hinge(chosen: torch.Tensor, rejected: torch.Tensor, *, delta: float) -> torch.Tensor:
    """Per-pair calibration hinge max(0, δ - (s_w - s_l)) on scores s."""
    return torch.relu(delta - (chosen - rejected))


class SLiC(Objective):
    """SLiC-HF: a hinge of margin δ on sequence log-likelihoods, plus λ · chosen NLL."""

    description = "SLiC-HF: hinge of margin δ on log-likelihoods + λ · NLL of the chosen"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        delta: float = 1.0
        """δ: the margin log π(y_w) - log π(y_l) must reach before a pair stops counting."""
        nll_weight: float = 0.0
        """λ: weight of the NLL of the preferred completions; 0 turns it off."""
        use_reference: bool = False
        """Hinge on log π/π_ref instead of log π, with a reference model."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "delta")
        require_non_negative(config, "nll_weight")

    def needs(self) -> Needs:
        return Needs(reference=self.config.use_reference)

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        c = self.config
        chosen, rejected = inputs.chosen, inputs.rejected
        if c.use_reference:
            chosen, rejected = chosen - inputs.ref_chosen, rejected - inputs.ref_rejected
        hinge = slic_hinge(chosen, rejected, delta=c.delta)
        loss = hinge.mean()
        metrics = preference_metrics(chosen, rejected)
        metrics["slic/violations"] = (hinge > 0).float()
        if c.nll_weight > 0:
            nll = chosen_nll(inputs)
            loss = loss + c.nll_weight * nll
            metrics["slic/nll"] = nll.detach()
        return LossOutput(loss, metrics)
