"""BCO: Binary Classifier Optimization, on unpaired desirable / undesirable completions.

Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
arXiv:2404.04656, the BCO loss with its reward shift. The implicit reward
r(x, y) = β log π(y|x) / π_ref(y|x) is the logit of a binary classifier that tells
desirable completions (thumbs up) from undesirable ones (thumbs down), shifted by δ:

    L = -log σ(r(x, y) - δ)     if y is desirable
        -log σ(-(r(x, y) - δ))  if y is undesirable

The paper shows that minimising this binary cross-entropy minimises an upper bound of the
DPO loss, and that the bound is tightest when δ sits between the two classes' rewards;
it takes δ to be the average reward. prefopt keeps it as a running mean of every reward
β log π/π_ref seen in training (both classes, each completion weighing the same, across
devices), the current batch included, detached: no gradient flows through δ. Validation
batches read δ without moving it. δ starts at 0.

δ is training state. `state_dict()` / `load_state_dict()` carry it (the running mean and
how many rewards it averages); the training modules save it in every checkpoint, so a
resumed run continues with the δ it had.

`rewards/accuracies`: the share of completions on the right side of δ (desirable: r > δ;
undesirable: r < δ; exactly at it: ½). `bco/delta` is δ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    UnpairedLogps,
    require_positive,
)


def bco_loss(logps: torch.Tensor, ref_logps: torch.Tensor, labels: torch.Tensor, *,
             beta: float, delta: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example BCO loss, and the implicit rewards β log π/π_ref."""
    rewards = beta * (logps - ref_logps)
    logits = rewards - delta
    return torch.where(labels, -F.logsigmoid(logits), -F.logsigmoid(-logits)), rewards


class RunningMean:
    """The mean of every value added so far: (mean, count), merged batch by batch."""

    def __init__(self, mean: float = 0.0, count: int = 0):
        self.mean, self.count = mean, count

    def add(self, total: float, count: int) -> None:
        """Merge a batch of `count` values summing to `total`."""
        if count == 0:
            return
        merged = self.count + count
        self.mean += (total / count - self.mean) * count / merged
        self.count = merged


def _sum_and_count(values: torch.Tensor) -> tuple[float, int]:
    """Σ values and their number, over all devices of a distributed run."""
    stats = torch.stack([values.detach().sum().double(),
                         torch.tensor(values.numel(), dtype=torch.float64,
                                      device=values.device)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats)
    return float(stats[0]), int(stats[1])


class BCO(Objective):
    """BCO on unpaired records {prompt, completion, label}."""

    description = "BCO: binary classifier on β log π/π_ref shifted by the running mean δ"
    batch_format = BatchFormat.UNPAIRED

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 0.1
        """β: scale of the implicit reward β log π/π_ref, the classifier's logit."""

    def __init__(self, config: Config):
        super().__init__(config)
        require_positive(config, "beta")
        self.reward_mean = RunningMean()

    def needs(self) -> Needs:
        return Needs(reference=True)

    def state_dict(self) -> dict:
        """δ's running mean and count, for a checkpoint."""
        return {"reward_mean": self.reward_mean.mean, "reward_count": self.reward_mean.count}

    def load_state_dict(self, state: dict) -> None:
        self.reward_mean = RunningMean(float(state.get("reward_mean", 0.0)),
                                       int(state.get("reward_count", 0)))

    def loss(self, inputs: UnpairedLogps) -> LossOutput:
        beta, labels = self.config.beta, inputs.labels
        rewards = beta * (inputs.logps - inputs.ref_logps).detach()
        # A training step (the policy's log-probs carry a gradient) moves δ; a validation
        # step, under no_grad, only reads it.
        if torch.is_grad_enabled() and inputs.logps.requires_grad:
            self.reward_mean.add(*_sum_and_count(rewards))
        delta = torch.tensor(self.reward_mean.mean, dtype=rewards.dtype, device=rewards.device)
        losses, rewards = bco_loss(inputs.logps, inputs.ref_logps, labels, beta=beta,
                                   delta=delta)
        rewards = rewards.detach()
        right_side = torch.where(labels, rewards > delta, rewards < delta).float() \
            + 0.5 * (rewards == delta).float()
        metrics = {"rewards/chosen": rewards[labels], "rewards/rejected": rewards[~labels],
                   "rewards/accuracies": right_side, "bco/delta": delta}
        if labels.any() and (~labels).any():
            metrics["rewards/margins"] = rewards[labels].mean() - rewards[~labels].mean()
        return LossOutput(losses.mean(), metrics)
