"""PreferenceModule: the LightningModule that hosts an objective plugin.

One step: chosen and rejected sequences go through the policy in one forward (they are
stacked in the batch), completion log-probs come from `prefopt.logprobs` (reference ones
under no_grad), the objective turns them into a loss and metrics, and the module logs the
metric schema of DESIGN.md under `train/` or `val/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from transformers import get_scheduler

from prefopt.data.collate import MISMATCHED_SLOT, ROW_KEYS
from prefopt.logprobs import SequenceLogps, completion_logps
from prefopt.models import uses_lora
from prefopt.objective import (AttributeScores, BatchFormat, Objective, PairwiseLogps,
                               PairwiseScores, RankedLogps, RankedScores, ResponseLogps,
                               UnpairedLogps)



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


@dataclass
class StepData:
    """Per-row bookkeeping of one batch (mismatched KL rows excluded)."""

    slot: torch.Tensor  # which completion of its prompt each row is
    group: torch.Tensor  # which prompt
    ranks: torch.Tensor
    n_groups: int
    policy: SequenceLogps | None = None  # None for reward models
    reference: SequenceLogps | None = None


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN or infinite; training cannot go on meaningfully."""


class PreferenceModule(pl.LightningModule):
    def __init__(self, policy, reference, objective: Objective, optimizer: OptimizerConfig,
                 scheduler: SchedulerConfig, logprob_impl: str = "auto",
                 reference_cached: bool = False, schema=None):
        """`schema`: the AttributeSchema of attributed records (an attribute model's
        outputs follow its order and scale)."""
        super().__init__()
        self.needs = objective.needs()
        # Reference log-probs come from the batch (`ref_logps`, computed once and cached),
        # from the policy with its LoRA adapters disabled (no second copy), or from a model.
        self.reference_cached = self.needs.reference and reference_cached
        self.reference_is_base = self.needs.reference and reference is None \
            and not self.reference_cached and uses_lora(policy)
        if self.needs.reference and reference is None and not (self.reference_cached
                                                                or self.reference_is_base):
            raise ValueError(f"objective '{objective.config.name}' needs a reference model")
        self.policy = policy
        self.reference = reference if self.needs.reference else None
        self.objective = objective
        self.optimizer_cfg, self.scheduler_cfg = optimizer, scheduler
        self.logprob_impl = logprob_impl
        # Log-probs of softmax(W h / temperature): 1 for recorded data; an online module
        # sets its sampling temperature, so that log-probs are those of the samples.
        self.temperature = 1.0
        self.schema = schema
        if schema is not None:
            specs = schema.specs
            self.register_buffer("_attribute_min", torch.tensor([s.min for s in specs]),
                                 persistent=False)
            self.register_buffer("_attribute_scale",
                                 torch.tensor([s.max - s.min for s in specs]), persistent=False)

    def _logps(self, model, batch, grad: bool, keep_hidden: bool = False) -> SequenceLogps:
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return completion_logps(model, batch, temperature=self.temperature,
                                    impl=self.logprob_impl,
                                    entropy_grad=grad and self.needs.entropy,
                                    token_level=self.needs.token_logps, keep_hidden=keep_hidden)

    def _reference_logps(self, batch) -> SequenceLogps:
        if self.reference_is_base:
            with self.policy.disable_adapter():
                return self._logps(self.policy, batch, grad=False)
        return self._logps(self.reference, batch, grad=False)

    def _ratio_mean_across_devices(self, batch) -> torch.Tensor:
        """Mean Σ log π/π_ref over the mismatched rows, detached, over all devices."""
        with torch.no_grad():
            ratio = self._logps(self.policy, batch, grad=False).logps \
                - self._reference_logps(batch).logps
            count = torch.tensor(float(ratio.numel()), dtype=ratio.dtype, device=ratio.device)
            total = torch.stack([ratio.sum(), count])
            trainer = self._trainer  # None outside a Trainer (unit tests, conformance kit)
            if trainer is not None and trainer.world_size > 1:
                total = trainer.strategy.reduce(total, reduce_op="sum")
            return total[0] / total[1]

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[object, StepData]:
        """What `objective.loss` receives for `batch`, and the per-row data behind it.

        The inputs are PairwiseLogps / UnpairedLogps / RankedLogps by the objective's batch
        format (PairwiseScores / RankedScores for reward models); policy values carry
        gradients, reference ones do not. The conformance kit (prefopt.testing) uses this
        to check objectives on exactly what training hands them.
        """
        mismatched = batch["slot"] == MISMATCHED_SLOT
        rows = {k: v[~mismatched] for k, v in batch.items() if k in ROW_KEYS}
        slot, group, ranks = (batch[k][~mismatched] for k in ("slot", "group", "ranks"))
        data = StepData(slot=slot, group=group, ranks=ranks, n_groups=int(group.max()) + 1)
        fmt = self.objective.batch_format
        if self.needs.reward_model:
            logits = self.policy(input_ids=rows["input_ids"],
                                 attention_mask=rows["attention_mask"]).logits.float()
            if fmt == BatchFormat.ATTRIBUTED:
                return self._attribute_scores(logits, batch["attributes"]), data
            scores = logits[:, 0]
            if fmt == BatchFormat.PAIRWISE:
                return PairwiseScores(scores[slot == 0], scores[slot == 1],
                                      batch["margins"]), data
            return RankedScores(scores, ranks, group), data

        data.policy = policy = self._logps(self.policy, rows, grad=True)
        if self.reference_cached:
            if "ref_logps" not in batch:
                raise ValueError("reference=cached, but the batch carries no ref_logps")
            cached = batch["ref_logps"][~mismatched]
            data.reference = reference = SequenceLogps(cached, policy.tokens,
                                                       torch.zeros_like(cached))
        else:
            data.reference = reference = self._reference_logps(rows) \
                if self.needs.reference else None
        ref = reference.logps if reference is not None else None
        if fmt == BatchFormat.PAIRWISE:
            c, r = slot == 0, slot == 1
            return PairwiseLogps(chosen=policy.logps[c], rejected=policy.logps[r],
                                 chosen_tokens=policy.tokens[c],
                                 rejected_tokens=policy.tokens[r],
                                 ref_chosen=ref[c] if ref is not None else None,
                                 ref_rejected=ref[r] if ref is not None else None), data
        if fmt == BatchFormat.UNPAIRED:
            kl_ratio = None
            if self.needs.mismatched_pairs:
                kl_ratio = self._ratio_mean_across_devices(
                    {k: v[mismatched] for k, v in batch.items() if k in ROW_KEYS})
            return UnpairedLogps(policy.logps, policy.tokens, batch["labels"], ref,
                                 kl_ratio), data
        if fmt == BatchFormat.RANKED:
            return RankedLogps(policy.logps, policy.tokens, ranks, group, ref), data
        if fmt == BatchFormat.ATTRIBUTED:
            return ResponseLogps(policy.logps, policy.tokens, ref), data
        raise ValueError(f"PreferenceModule does not feed {fmt.value} batches")

    def _attribute_scores(self, predictions: torch.Tensor, values: torch.Tensor
                          ) -> AttributeScores:
        if self.schema is None:
            raise ValueError("an attribute model needs the attribute schema (schema=...)")
        if predictions.shape[-1] != len(self.schema):
            raise ValueError(f"the model has {predictions.shape[-1]} outputs, but the "
                             f"attribute schema has {len(self.schema)} attributes")
        present = ~torch.isnan(values)
        targets = (values.nan_to_num(0.0) - self._attribute_min) / self._attribute_scale
        return AttributeScores(predictions, targets, present, self.schema.names,
                               self._attribute_scale)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, data = self.loss_inputs(batch)
        out = self.objective.loss(inputs)
        metrics = {"loss": out.loss.detach(), **out.metrics}
        weights: dict[str, int] = {}  # metrics not weighted by the number of examples
        if data.policy is not None:
            policy, reference = data.policy, data.reference
            if self.objective.batch_format == BatchFormat.ATTRIBUTED:
                metrics["logps/response"] = policy.logps.detach()
            else:
                best, worst = self._best_and_worst(data.slot, data.group, data.ranks, batch)
                metrics["logps/chosen"] = policy.logps[best].detach()
                metrics["logps/rejected"] = policy.logps[worst].detach()
            if reference is not None:
                # Σ_t log π/π_ref on the data's completions: the k1 estimate of the
                # sequence KL (exact in expectation on samples of π), per completion.
                metrics["kl"] = (policy.logps - reference.logps).detach()
            n_tokens = max(int(policy.tokens.sum()), 1)
            # Token-weighted: averaged over tokens, not over examples, across batches too.
            metrics["entropy"] = policy.entropy.detach().sum() / n_tokens
            weights["entropy"] = n_tokens
        return self._log(metrics, stage, weights, data.n_groups, out.loss)

    def _best_and_worst(self, slot, group, ranks, batch):
        """Row masks of the preferred and dispreferred completions, for logps/* metrics."""
        fmt = self.objective.batch_format
        if fmt == BatchFormat.UNPAIRED:
            labels = batch["labels"][group]
            return labels, ~labels
        if fmt == BatchFormat.RANKED:
            n = int(group.max()) + 1
            top = torch.full((n,), torch.iinfo(ranks.dtype).max, dtype=ranks.dtype,
                             device=ranks.device).scatter_reduce(0, group, ranks, "amin")
            bottom = torch.full_like(top, torch.iinfo(ranks.dtype).min).scatter_reduce(
                0, group, ranks, "amax")
            return ranks == top[group], ranks == bottom[group]
        return slot == 0, slot == 1

    def _log(self, metrics: dict[str, torch.Tensor], stage: str, weights: dict[str, int],
             n_groups: int, loss: torch.Tensor) -> torch.Tensor:
        # A batch may hold no example of a kind (e.g. no undesirable completion): skip the
        # metric for this batch rather than log the NaN of an empty mean.
        metrics = {k: v for k, v in metrics.items() if v.numel() > 0}
        # Means over every device, so that a NaN on one device stops all of them together
        # (one stopping alone would leave the others waiting in a collective).
        reduced = self._metrics_across_devices(metrics, weights, n_groups, stage)
        self._check_finite({name: mean for name, (mean, _) in reduced.items()}, stage)
        on_step = stage == "train"
        for name, (mean, weight) in reduced.items():
            # Already the global batch's value on every device: train/ values are those of
            # the whole step, and Lightning's epoch average of val/ ones, weighted by each
            # batch's global weight, is the mean over the whole validation set. sync_dist
            # then changes nothing (equal values on every device); it only spares
            # Lightning's warning about unsynced epoch metrics.
            self.log(f"{stage}/{name}", mean, batch_size=weight,
                     on_step=on_step, on_epoch=not on_step, sync_dist=not on_step,
                     prog_bar=name in ("loss", "rewards/accuracies"))
        return loss

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

    def _metrics_across_devices(self, metrics: dict[str, torch.Tensor],
                                weights: dict[str, int], n_groups: int, stage: str
                                ) -> dict[str, tuple[torch.Tensor, int]]:
        """{name: (mean, weight)} of each metric over the batches of all devices.

        A metric's weight on one device is `weights[name]` where given (entropy: its
        tokens); else, for a tensor of values (per pair, example or completion), their
        number, so the mean is that over all values of the global batch; else (a scalar,
        e.g. the loss, a mean over the batch's examples) the number of prompts. Across
        devices the mean is Σ mean·weight / Σ weight: one all-reduce of a sum per step.
        Lightning's sync_dist cannot replace it: it averages step (train/) values
        unweighted, and on gloo it averages epoch values' summed weights across devices
        in their integer dtype, truncating them (docs/distributed.md).
        """
        local = {name: (value.detach().float().mean(), int(weights.get(
                     name, value.numel() if value.ndim > 0 else n_groups)))
                 for name, value in metrics.items()}
        trainer = self._trainer  # None outside a Trainer (unit tests, conformance kit)
        if trainer is None or trainer.world_size <= 1:
            return local
        # Devices may log different metrics (a batch without an undesirable example has no
        # rewards/rejected), but an all-reduce needs one layout: every name seen so far on
        # any device, in the order first seen (rank 0's first: the loss leads), agreed on
        # again whenever a device sees a new one. Every device then logs the same names in
        # the same order, as Lightning's epoch-end sync of each metric requires.
        known = self.__dict__.setdefault("_metric_names_across_devices", {}).setdefault(
            stage, [])
        while True:
            totals = self._sums_across_devices(local, known)
            flat = totals.tolist()  # one device sync
            if flat[-1] == 0:  # no device saw a name outside `known`
                break
            names = [None] * trainer.world_size
            torch.distributed.all_gather_object(names, list(local))
            known += [name for name in dict.fromkeys(n for ns in names for n in ns)
                      if name not in known]
        return {name: ((totals[2 * i] / totals[2 * i + 1]).float(), round(flat[2 * i + 1]))
                for i, name in enumerate(known) if flat[2 * i + 1] > 0}

    def _sums_across_devices(self, local: dict[str, tuple[torch.Tensor, int]],
                             known: list[str]) -> torch.Tensor:
        """[Σ mean·weight, Σ weight] for each name of `known` (0, 0 where a device lacks
        it), then the number of devices with a name outside `known`; summed over devices."""
        device = next(iter(local.values()))[0].device if local else self.device
        zero = torch.zeros((), dtype=torch.float64, device=device)
        parts = []
        for name in known:
            mean, weight = local.get(name, (zero, 0))
            parts += [mean.double() * weight, zero + weight]
        parts.append(zero + any(name not in known for name in local))
        return self._trainer.strategy.reduce(torch.stack(parts), reduce_op="sum")

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                 on_epoch=False, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates: the policy's trainable weights (subclasses add
        theirs, e.g. a value head)."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    def _fused_adamw(self, params: list[torch.nn.Parameter]) -> bool:
        if self.optimizer_cfg.fused is not None:
            return self.optimizer_cfg.fused
        # By default on CUDA only: on the CPU it would only change the rounding of every
        # figure measured with the foreach loop. Not beside an fp16 gradient scaler, which
        # must unscale before clipping, while the fused kernel unscales inside its step.
        return bool(params) and all(p.is_cuda and p.is_floating_point() for p in params) \
            and getattr(self._precision_plugin(), "scaler", None) is None

    def _precision_plugin(self):
        return self._trainer.precision_plugin if self._trainer is not None else None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        self.clip_all(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_all(self, optimizer, clip_val, algorithm) -> None:
        """Lightning's clipping, except for a fused optimizer without a gradient scaler
        (bf16): Lightning's mixed-precision plugin refuses to clip for any optimizer that
        unscales gradients inside its step, although with no scaler there is nothing to
        unscale; the gradients are clipped here as its full-precision plugin would."""
        if not clip_val:
            return
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        plugin = self._precision_plugin()
        if not (fused and isinstance(plugin, pl.plugins.precision.MixedPrecision)
                and plugin.scaler is None):
            self.clip_gradients(optimizer, gradient_clip_val=clip_val,
                                gradient_clip_algorithm=algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, clip_val)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning zeroes gradients inside the next step's closure, after that step's
        # forward: until then they would sit beside its activations, a copy of the
        # trainable weights' size added to the peak. Freed here, right after the update.
        optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        cfg, sched = self.optimizer_cfg, self.scheduler_cfg
        params = self.trainable_parameters()
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      eps=cfg.eps, fused=self._fused_adamw(params) or None)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = sched.warmup_steps or round(sched.warmup_ratio * total)
        scheduler = get_scheduler(sched.name, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total,
                                  scheduler_specific_kwargs=dict(sched.kwargs))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
