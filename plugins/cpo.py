"""CPO: Contrastive Preference Optimization, reference-free.

Xu, Sharaf, Chen, Tan, Shen, Van Durme, Murray and Kim, "Contrastive Preference
Optimization: Pushing the Boundaries of LLM Performance in Machine Translation", ICML 2024,
arXiv:2401.08417, the CPO loss: its preference term and the NLL term beside it. CPO
drops DPO's reference model (π_ref ≡ 1, the limit the paper derives as an upper bound of
the DPO loss) and keeps the policy near the preferred data with a negative log-likelihood
term instead:

    L_prefer = -log σ(β log π(y_w|x) - β log π(y_l|x))
    L        = L_prefer + α L_NLL,    L_NLL = -log π(y_w|x)

Log-probabilities in L_prefer are summed over the completion's tokens. L_NLL is averaged
over the preferred completions' tokens (every token of the batch weighing the same): the
paper writes the sequence log-likelihood, TRL's CPOTrainer averages the token
cross-entropy, and a summed NLL would scale with completion length against a length-free
preference term; α = 1 as in the paper. The `rewards/*` metrics are
β log π(y); `cpo/nll` is L_NLL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

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


class CPO(Objective):
    """CPO: reference-free DPO on summed log-probs plus α times the chosen NLL."""

    description = "CPO: reference-free DPO loss + α · NLL of the chosen completions"
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the log-likelihood margin in the logistic loss (the paper: 0.1)."""
        nll_weight: float = 1.0
        """α: weight of the NLL of the preferred completions; 0 turns it off."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")
        require_non_negative(config, "nll_weight")

    def needs(self) -> Needs:
        return Needs(reference=False)

    def loss(self, inputs: PairwiseLogps) -> LossOutput:
        c = self.config
        prefer = -F.logsigmoid(c.beta * (inputs.chosen - inputs.rejected))
        nll = chosen_nll(inputs)
        metrics = preference_metrics(c.beta * inputs.chosen, c.beta * inputs.rejected)
        metrics["cpo/nll"] = nll.detach()
        return LossOutput(prefer.mean() + c.nll_weight * nll, metrics)
