"""PreferenceModule: the LightningModule that hosts an objective plugin.

One step: chosen and rejected sequences go through the policy in one forward (they are
stacked in the batch), completion log-probs come from `prefopt.logprobs` (reference ones
under no_grad), the objective turns them into a loss and metrics, and the module logs the
metric schema of DESIGN.md under `train/` or `val/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from transformers import get_scheduler

from prefopt.logprobs import completion_logps
from prefopt.objective import Objective, PairwiseLogps


@dataclass
class OptimizerConfig:
    """AdamW. Weight decay applies to matrices only, not to norms and biases."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: any `transformers.get_scheduler` name, with linear warmup."""

    name: str = "cosine"
    warmup_steps: int = 0
    """Warmup in optimizer steps; 0: use `warmup_ratio`."""
    warmup_ratio: float = 0.05
    """Warmup as a fraction of all optimizer steps, when `warmup_steps` is 0."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra arguments of the schedule, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr."""


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN or infinite; training cannot go on meaningfully."""


class PreferenceModule(pl.LightningModule):
    def __init__(self, policy, reference, objective: Objective, optimizer: OptimizerConfig,
                 scheduler: SchedulerConfig, logprob_impl: str = "auto"):
        super().__init__()
        self.needs = objective.needs()
        if self.needs.reference and reference is None:
            raise ValueError(f"objective '{objective.config.name}' needs a reference model")
        self.policy = policy
        self.reference = reference if self.needs.reference else None
        self.objective = objective
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.logprob_impl = logprob_impl

    def _logps(self, model, batch, grad: bool):
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return completion_logps(model, batch, impl=self.logprob_impl,
                                    entropy_grad=grad and self.needs.entropy,
                                    token_level=self.needs.token_logps)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        n_pairs = batch["input_ids"].shape[0] // 2
        chosen, rejected = slice(0, n_pairs), slice(n_pairs, None)
        policy = self._logps(self.policy, batch, grad=True)
        reference = self._logps(self.reference, batch, grad=False) \
            if self.reference is not None else None
        out = self.objective.loss(PairwiseLogps(
            chosen=policy.logps[chosen], rejected=policy.logps[rejected],
            chosen_tokens=policy.tokens[chosen], rejected_tokens=policy.tokens[rejected],
            ref_chosen=reference.logps[chosen] if reference is not None else None,
            ref_rejected=reference.logps[rejected] if reference is not None else None))

        # Per-pair metrics (weighted by pairs) and token-weighted entropy.
        metrics = {"loss": out.loss.detach(), **out.metrics,
                   "logps/chosen": policy.logps[chosen].detach(),
                   "logps/rejected": policy.logps[rejected].detach()}
        if reference is not None:
            # Σ_t log π/π_ref on the data's completions, averaged over the pair's two:
            # the k1 estimate of the sequence KL (exact in expectation on samples of π).
            ratio = (policy.logps - reference.logps).detach()
            metrics["kl"] = (ratio[chosen] + ratio[rejected]) / 2
        self._check_finite(metrics, stage)
        on_step = stage == "train"
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value.float().mean(), batch_size=n_pairs,
                     on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                     prog_bar=name in ("loss", "rewards/accuracies"))
        n_tokens = int(policy.tokens.sum())
        self.log(f"{stage}/entropy", policy.entropy.detach().sum() / max(n_tokens, 1),
                 batch_size=max(n_tokens, 1), on_step=on_step, on_epoch=not on_step,
                 sync_dist=not on_step)
        return out.loss

    def _check_finite(self, metrics: dict[str, torch.Tensor], stage: str) -> None:
        # One device sync for all metrics; the loss comes first, so it is named first.
        means = torch.stack([v.float().mean() for v in metrics.values()])
        if bool(torch.isfinite(means).all()):
            return
        for name, mean in zip(metrics, means):
            if not torch.isfinite(mean):
                raise NonFiniteError(
                    f"{stage}/{name} became {mean.item()} at step {self.global_step}; "
                    "stopping. Try a lower optimizer.lr, gradient clipping "
                    "(trainer.gradient_clip_val) or trainer.precision=32-true.")

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                 on_epoch=False, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        cfg, sched = self.optimizer_cfg, self.scheduler_cfg
        params = [p for p in self.policy.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.eps)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = sched.warmup_steps or round(sched.warmup_ratio * total)
        scheduler = get_scheduler(sched.name, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total,
                                  scheduler_specific_kwargs=dict(sched.kwargs))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
