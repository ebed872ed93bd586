"""AdamW, its learning-rate schedule and gradient clipping, for both training modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from transformers import get_scheduler


@dataclass
class OptimizerConfig:
    """AdamW. Weight decay applies to matrices only, not to norms and biases."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    fused: Optional[bool] = None
    """torch's fused AdamW kernel (a few launches for all parameters, as HF's Trainer uses);
    empty: fused when every parameter is on CUDA and no fp16 gradient scaler is in use."""


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


def fused_adamw(cfg: OptimizerConfig, params: list[torch.nn.Parameter],
                precision_plugin) -> bool:
    if cfg.fused is not None:
        return cfg.fused
    # By default on CUDA only: on the CPU it would only change the rounding of every
    # figure measured with the foreach loop. Not beside an fp16 gradient scaler, which
    # must unscale before clipping, while the fused kernel unscales inside its step.
    return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params) \
        and getattr(precision_plugin, "scaler", None) is None


def configure(params: list[torch.nn.Parameter], cfg: OptimizerConfig, sched: SchedulerConfig,
              total_steps: int, precision_plugin) -> dict:
    """What a LightningModule's `configure_optimizers` returns: AdamW over `params` and
    its schedule, stepped once per optimizer step."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                  fused=fused_adamw(cfg, params, precision_plugin) or None)
    warmup = sched.warmup_steps or round(sched.warmup_ratio * total_steps)
    scheduler = get_scheduler(sched.name, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_steps,
                              scheduler_specific_kwargs=dict(sched.kwargs))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def clip_gradients(module: pl.LightningModule, optimizer, clip_val, algorithm) -> None:
    """Lightning's clipping, except for a fused optimizer without a gradient scaler
    (bf16): Lightning's mixed-precision plugin refuses to clip for any optimizer that
    unscales gradients inside its step, although with no scaler there is nothing to
    unscale; the gradients are clipped here as its full-precision plugin would."""
    if not clip_val:
        return
    fused = getattr(optimizer, "_step_supports_amp_scaling", False)
    plugin = getattr(module._trainer, "precision_plugin", None)  # None outside a Trainer
    if not (fused and isinstance(plugin, pl.plugins.precision.MixedPrecision)
            and plugin.scaler is None):
        module.clip_gradients(optimizer, gradient_clip_val=clip_val,
                              gradient_clip_algorithm=algorithm)
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, clip_val)
