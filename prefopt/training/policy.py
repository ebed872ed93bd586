"""PolicyModule: what the offline and the online training modules share.

A policy, and where its reference log-probs come from (a frozen copy, the policy itself
with its LoRA adapters disabled, or a cache of the data's values); log-probs read through
`prefopt.logprobs`; metrics logged through `MetricLog`; AdamW with its schedule and
clipping (`optim`). Each module adds only its own step: `PreferenceModule` feeds recorded
batches to an objective, `OnlineModule` samples, scores and optimises on its samples.
"""

from __future__ import annotations

from typing import Mapping

import pytorch_lightning as pl
import torch

from prefopt.logprobs import SequenceLogps, completion_logps
from prefopt.models import uses_lora
from prefopt.objective import LossOutput, Objective, loss_output_problem
from prefopt.registry import PluginError
from prefopt.training import optim
from prefopt.training.metrics import MetricLog

# Where a checkpoint keeps the objective's own training state (`Objective.state_dict`).
OBJECTIVE_STATE_KEY = "prefopt_objective_state"


class PolicyModule(pl.LightningModule):
    def __init__(self, policy, reference, objective: Objective, optimizer: optim.OptimizerConfig,
                 scheduler: optim.SchedulerConfig, logprob_impl: str = "auto",
                 reference_cached: bool = False, temperature: float = 1.0):
        """`reference`: a frozen model, or None where the objective needs none, where the
        policy carries LoRA adapters (the reference is the policy without them) or where
        `reference_cached` (the batches carry the reference's log-probs).

        `temperature`: log-probs are those of softmax(W h / temperature); 1 for recorded
        data, the sampling temperature for samples."""
        super().__init__()
        self.needs = objective.needs()
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
        self.temperature = temperature
        self.metric_log = MetricLog()

    # -- log-probs ---------------------------------------------------------------------

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

    # -- the contract ------------------------------------------------------------------

    def _checked(self, out: LossOutput, stage: str, source: str) -> LossOutput:
        """`out` if it keeps the plugin contract (a LossOutput with a scalar loss, with a
        gradient in a training step); else a PluginError naming the objective, in the
        conformance kit's words, instead of an autograd traceback from Lightning's
        backward. Free: no device sync (finiteness is the metric check's)."""
        training = stage == "train" and torch.is_grad_enabled()
        problem = loss_output_problem(out, needs_grad=training, source=source)
        if problem:
            phase = "training" if stage == "train" else "validation"
            raise PluginError(f"objective '{self.objective.config.name}' breaks the plugin "
                              f"contract ({phase}, step {self.global_step}): {problem}. "
                              "prefopt.testing.check_objective finds this before training.")
        return out

    # -- metrics -----------------------------------------------------------------------

    def _log(self, metrics: Mapping[str, torch.Tensor], stage: str, weights: Mapping[str, int],
             n_groups: int) -> None:
        self.metric_log.log(self, metrics, stage, weights, n_groups)

    # The finiteness checks an accelerator batches (`MetricLog`) are all made before a
    # validation starts, when it ends (before its checkpoints are written) and when
    # training ends (before the final checkpoint and export).
    def on_validation_epoch_start(self) -> None:
        self.metric_log.check()

    def on_validation_epoch_end(self) -> None:
        self.metric_log.check()

    def on_train_end(self) -> None:
        self.metric_log.check()

    # An objective's training state (PPO's adaptive KL coefficient, BCO's running reward
    # mean) travels in the checkpoint, so a resumed run continues from it.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[OBJECTIVE_STATE_KEY] = self.objective.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.objective.load_state_dict(checkpoint.get(OBJECTIVE_STATE_KEY, {}))

    # -- optimisation ------------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer updates: the policy's trainable weights (the online module
        adds its value model's)."""
        return [p for p in self.policy.parameters() if p.requires_grad]

    def configure_optimizers(self):
        plugin = getattr(self._trainer, "precision_plugin", None)  # None outside a Trainer
        return optim.configure(self.trainable_parameters(), self.optimizer_cfg,
                               self.scheduler_cfg, int(self.trainer.estimated_stepping_batches),
                               plugin)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None):
        optim.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
