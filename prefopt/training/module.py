"""PreferenceModule: the LightningModule that hosts an offline objective plugin.

One step: chosen and rejected sequences go through the policy in one forward (they are
stacked in the batch), completion log-probs come from `prefopt.logprobs` (reference ones
under no_grad), the format's builder in `prefopt.objective.FORMATS` turns them into the
objective's loss input, and the module logs the loss, the objective's metrics and its own
(`logps/*`, `kl`, `entropy`) under `train/` or `val/`. What it shares with the online
module (reference log-probs, metric reduction, the optimizer) is `PolicyModule`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.data.collate import MISMATCHED_SLOT, ROW_KEYS
from prefopt.logprobs import SequenceLogps
from prefopt.objective import FORMATS, AttributeScale, Objective, Rows, TokenLogps
from prefopt.training.optim import OptimizerConfig, SchedulerConfig
from prefopt.training.policy import PolicyModule


@dataclass
class StepData:
    """Per-row bookkeeping of one batch (mismatched KL rows excluded)."""

    rows: Rows
    n_groups: int
    policy: SequenceLogps | None = None  # None for reward models
    reference: SequenceLogps | None = None


class PreferenceModule(PolicyModule):
    def __init__(self, policy, reference, objective: Objective, optimizer: OptimizerConfig,
                 scheduler: SchedulerConfig, logprob_impl: str = "auto",
                 reference_cached: bool = False, schema=None):
        """`schema`: the AttributeSchema of attributed records (an attribute model's
        outputs follow its order and scale)."""
        super().__init__(policy, reference, objective, optimizer, scheduler,
                         logprob_impl=logprob_impl, reference_cached=reference_cached)
        self.format = FORMATS[objective.batch_format]
        if self.format.logps is None:
            raise ValueError(f"PreferenceModule does not feed {objective.batch_format.value} "
                             "batches")
        if self.reference_cached and self.needs.token_logps:
            raise ValueError(f"reference=cached stores summed reference log-probs only, but "
                             f"objective '{objective.config.name}' needs per-token ones "
                             "(needs().token_logps); use reference=model")
        self.schema = schema
        if schema is not None:
            specs = schema.specs
            self.register_buffer("_attribute_min", torch.tensor([s.min for s in specs]),
                                 persistent=False)
            self.register_buffer("_attribute_scale",
                                 torch.tensor([s.max - s.min for s in specs]), persistent=False)

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

    def _attributes(self) -> AttributeScale | None:
        if self.schema is None:
            return None
        return AttributeScale(self.schema.names, self._attribute_min, self._attribute_scale)

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[object, StepData]:
        """What `objective.loss` receives for `batch`, and the per-row data behind it.

        The inputs are what the format's builder in `prefopt.objective.FORMATS` makes:
        PairwiseLogps / UnpairedLogps / RankedLogps / ResponseLogps, or PairwiseScores /
        RankedScores / AttributeScores for reward models; policy values carry gradients,
        reference ones do not. With needs().token_logps the log-prob inputs also carry the
        per-token log-probs and masks of policy and reference. The conformance kit
        (prefopt.testing) uses this to check objectives on exactly what training hands
        them.
        """
        mismatched = batch["slot"] == MISMATCHED_SLOT
        model_rows = {k: v[~mismatched] for k, v in batch.items() if k in ROW_KEYS}
        slot, group, ranks = (batch[k][~mismatched] for k in ("slot", "group", "ranks"))
        rows = Rows(slot=slot, group=group, ranks=ranks, batch=batch)
        data = StepData(rows=rows, n_groups=int(group.max()) + 1)
        if self.needs.reward_model:
            outputs = self.policy(input_ids=model_rows["input_ids"],
                                  attention_mask=model_rows["attention_mask"]).logits.float()
            return self.format.scores(rows, outputs, self._attributes()), data

        data.policy = policy = self._logps(self.policy, model_rows, grad=True)
        if self.reference_cached:
            if "ref_logps" not in batch:
                raise ValueError("reference=cached, but the batch carries no ref_logps")
            cached = batch["ref_logps"][~mismatched]
            data.reference = SequenceLogps(cached, policy.tokens, torch.zeros_like(cached))
        elif self.needs.reference:
            data.reference = self._reference_logps(model_rows)
        kl_ratio = None
        if self.needs.mismatched_pairs:
            kl_ratio = self._ratio_mean_across_devices(
                {k: v[mismatched] for k, v in batch.items() if k in ROW_KEYS})
        ref = data.reference.logps if data.reference is not None else None
        per_token = None
        if self.needs.token_logps:
            per_token = TokenLogps(
                policy.token_logps, model_rows["completion_mask"][:, 1:],
                data.reference.token_logps if data.reference is not None else None)
        return self.format.logps(rows, policy.logps, policy.tokens, ref, kl_ratio,
                                 per_token), data

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, data = self.loss_inputs(batch)
        source = "the reward model's scores" if self.needs.reward_model \
            else "the policy's log-probs"
        out = self._checked(self.objective.loss(inputs), stage, source)
        metrics = {"loss": out.loss.detach(), **out.metrics}
        weights: dict[str, int] = {}  # metrics not weighted by the number of examples
        if data.policy is not None:
            policy, reference = data.policy, data.reference
            if self.format.best_and_worst is None:
                metrics["logps/response"] = policy.logps.detach()
            else:
                best, worst = self.format.best_and_worst(data.rows)
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
        self._log(metrics, stage, weights, data.n_groups)
        return out.loss

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True,
                 on_epoch=False, batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning zeroes gradients inside the next step's closure, after that step's
        # forward: until then they would sit beside its activations, a copy of the
        # trainable weights' size added to the peak. Freed here, right after the update.
        optimizer.zero_grad(set_to_none=True)
