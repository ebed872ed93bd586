"""PreferenceModule: the LightningModule that hosts an offline objective plugin.

One step: chosen and rejected sequences go through the policy in one forward (they are
stacked in the batch), completion log-probs come from `prefopt.logprobs` (reference ones
under no_grad, or from `prefopt.reference_memo` for rows the reference already scored in
this run), the format's builder in `prefopt.objective.FORMATS` turns them into the
objective's loss input, and the module logs the loss, the objective's metrics and its own
(`logps/*`, `kl`, `entropy`) under `train/` or `val/`. What it shares with the online
module (reference log-probs, metric reduction, the optimizer) is `PolicyModule`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.data.collate import MISMATCHED_SLOT, ROW_HASHES, ROW_KEYS
from prefopt.logprobs import SequenceLogps
from prefopt.objective import FORMATS, AttributeScale, Objective, Rows, TokenLogps
from prefopt.reference_memo import ReferenceMemo
from prefopt.training.optim import OptimizerConfig, SchedulerConfig
from prefopt.training.policy import PolicyModule


@dataclass
class StepData:
    """Per-row bookkeeping of one batch (mismatched KL rows excluded)."""

    rows: Rows
    n_groups: int
    policy: SequenceLogps | None = None  # None for reward models
    reference: SequenceLogps | None = None


def revisits_training_data(trainer) -> bool:
    """Whether a fit will see some training batch again: more batches to run than one
    epoch holds (False where an epoch's length is unknown)."""
    per_epoch = trainer.num_training_batches
    if not per_epoch or per_epoch == float("inf"):
        return False
    return trainer.estimated_stepping_batches * trainer.accumulate_grad_batches > per_epoch


class PreferenceModule(PolicyModule):
    # Whether the reference values of training rows are kept for reuse in a later epoch
    # (online pairs sample new completions at every step: theirs never come again).
    KEEPS_TRAINING_REFERENCES = True

    def __init__(self, policy, reference, objective: Objective, optimizer: OptimizerConfig,
                 scheduler: SchedulerConfig, logprob_impl: str = "auto",
                 reference_cached: bool = False, schema=None, reference_reuse: bool = True):
        """`schema`: the AttributeSchema of attributed records (an attribute model's
        outputs follow its order and scale). `reference_reuse`: keep the reference's
        summed log-probs of the rows it scores and reuse them when the same tokens come
        again (`prefopt.reference_memo`): in every validation, and in training when the
        fit runs more than one epoch. Not for per-token reference values (kept whole
        they would cost the sequences' size) or a cached reference (nothing to compute)."""
        super().__init__(policy, reference, objective, optimizer, scheduler,
                         logprob_impl=logprob_impl, reference_cached=reference_cached)
        self.reference_memo = ReferenceMemo() if (
            reference_reuse and self.needs.reference and not self.needs.token_logps
            and not self.needs.reward_model and not self.reference_cached) else None
        self._memo_in_training = False
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
            data.reference = self._reference(model_rows, batch.get(ROW_HASHES), policy)
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

    # -- reference log-probs, reused -----------------------------------------------------

    def on_train_start(self) -> None:
        self._memo_in_training = self.KEEPS_TRAINING_REFERENCES and \
            self.reference_memo is not None and revisits_training_data(self.trainer)

    def _memo_in_use(self) -> bool:
        trainer = self._trainer  # None outside a Trainer: the conformance kit, unit tests
        if self.reference_memo is None or trainer is None:
            return False
        if getattr(trainer, "training", False):
            return self._memo_in_training
        return bool(getattr(trainer, "validating", False))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # The row keys stay on the host: the memo looks them up there, without a sync.
        if isinstance(batch, dict) and ROW_HASHES in batch:
            keys = batch[ROW_HASHES]
            moved = super().transfer_batch_to_device(
                {k: v for k, v in batch.items() if k != ROW_HASHES}, device, dataloader_idx)
            return {**moved, ROW_HASHES: keys}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _reference(self, rows: dict[str, torch.Tensor], keys: torch.Tensor | None,
                   policy: SequenceLogps) -> SequenceLogps:
        """The reference's log-probs of `rows`, from the memo where it holds them. `keys`:
        the batch's row keys; the rows are its first ones (mismatched rows come last)."""
        if keys is None or not self._memo_in_use():
            return self._reference_logps(rows)
        keys = [tuple(k) for k in keys[:rows["input_ids"].shape[0]].tolist()]

        def compute(missing: list[int]) -> torch.Tensor:
            if len(missing) == len(keys):
                return self._reference_logps(rows).logps
            index = torch.tensor(missing, device=rows["input_ids"].device)
            return self._reference_logps({k: v[index] for k, v in rows.items()}).logps

        logps = self.reference_memo.logps(keys, compute, policy.logps.device)
        # As from a cache: the reference's entropy is not computed (nothing reads it).
        return SequenceLogps(logps, policy.tokens, torch.zeros_like(logps))

    def reference_reuse_report(self) -> dict[str, int] | None:
        """Rows whose reference log-probs the memo gave back, and rows it scored."""
        memo = self.reference_memo
        if memo is None or memo.reused + memo.computed == 0:
            return None
        return {"reused": memo.reused, "computed": memo.computed}

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
        self.metric_log.log_learning_rate(self, self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning zeroes gradients inside the next step's closure, after that step's
        # forward: until then they would sit beside its activations, a copy of the
        # trainable weights' size added to the peak. Freed here, right after the update.
        optimizer.zero_grad(set_to_none=True)
