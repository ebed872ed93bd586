"""OnlineModule: the LightningModule of online objectives (REINFORCE, PPO, GRPO).

One training step is one rollout, then the objective's passes over it:

1. sample `rollout.num_samples` completions of each prompt of the batch from the policy
   (seeded by the run's seed and the optimizer step, so a resumed run samples the same);
2. score them with the reward source (missing-EOS penalty included); with
   `rollout.dynamic_sampling` (DAPO), drop the prompts whose samples all scored the same
   and sample more prompts until the batch is full (see `_dynamically_sampled`);
3. under no_grad: the sampling policy's token log-probs, the reference's, the old values
   (the Experience), then the objective's advantages;
4. `schedule()` = (epochs, minibatches): each epoch shuffles the rows and takes one
   optimizer step per minibatch on `objective.loss`. The old log-probs were computed on
   the first epoch's minibatches exactly as it feeds them, so the first ratio is 1.

Lightning's manual optimisation runs the steps: `trainer.max_steps` counts optimizer
steps (a PPO rollout with 4 epochs of 2 minibatches is 8), and gradient clipping
(`trainer.gradient_clip_val`) is applied here, per step. Validation answers each held-out
prompt greedily and logs the reward of the answers.
"""

from __future__ import annotations

import torch

from prefopt.data.collate import ROW_KEYS
from prefopt.data.prompts import collate_prompts
from prefopt.objective import Advantages, Experience, OnlineLogps, OnlineObjective, ValueModel
from prefopt.online.rewards import apply_missing_eos_penalty
from prefopt.online.rollout import (
    MAX_DRAWS,
    Rollout,
    RolloutConfig,
    check_config,
    concatenate,
    select_groups,
)
from prefopt.online.scoring import SamplesAndScores
from prefopt.online.value import build_value_model, token_values
from prefopt.rl import KLEstimator, kl_estimate, uniform_groups
from prefopt.training import optim
from prefopt.training.policy import PolicyModule


class OnlineModule(SamplesAndScores, PolicyModule):
    def __init__(self, policy, reference, objective: OnlineObjective, optimizer, scheduler,
                 tokenizer, reward, rollout: RolloutConfig, logprob_impl: str = "auto",
                 seed: int = 0, missing_eos_penalty: float | None = None):
        if not isinstance(objective, OnlineObjective):
            raise TypeError(f"OnlineModule hosts OnlineObjective subclasses, got "
                            f"{type(objective).__name__}")
        # Log-probs at the sampling temperature: those of what was sampled.
        super().__init__(policy, reference, objective, optimizer, scheduler,
                         logprob_impl=logprob_impl, temperature=rollout.temperature)
        check_config(rollout)
        if not self.needs.token_logps:
            raise ValueError(f"objective '{objective.config.name}': online objectives work "
                             "on per-token log-probs; declare needs().token_logps")
        self.automatic_optimization = False
        self.tokenizer, self.reward, self.rollout_cfg = tokenizer, reward, rollout
        self.seed, self.missing_eos_penalty = seed, missing_eos_penalty
        self.value_model = build_value_model(self.needs.value_model, policy)
        # Set from trainer.gradient_clip_val by prefopt.training.train: Lightning refuses automatic
        # clipping under manual optimisation, so the module clips each step itself.
        self.gradient_clip_val: float | None = None
        self.gradient_clip_algorithm = "norm"
        # Where dynamic sampling draws its extra prompts: the datamodule's train prompts
        # unless set (tests set it).
        self.prompt_pool: list | None = None

    # -- what is trained ---------------------------------------------------------------

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = super().trainable_parameters()
        if self.value_model is not None:
            params += [p for p in self.value_model.parameters() if p.requires_grad]
        return params

    # -- rollouts ----------------------------------------------------------------------

    def _step_seed(self) -> int:
        """The random seed of this optimizer step's sampling and shuffling: it depends on
        (seed, step) only, so a resumed run draws what an uninterrupted one would."""
        return self.seed * 1_000_003 + self.global_step

    def _sample(self, batch: dict, greedy: bool, draw: int = 0) -> Rollout:
        """`draw` > 0: dynamic sampling's extra draws, each seeded apart from the others."""
        seed = self._step_seed() if draw == 0 else self._draw_seed(draw)
        return self._seeded_sample(batch, seed, greedy=greedy)

    def _draw_seed(self, draw: int) -> int:
        # A function of (seed, step, draw) only, in a range of its own (from 2^62 up; the
        # step seeds stay far below), so an extra draw never replays another step's first.
        return 2 ** 62 + self._step_seed() * MAX_DRAWS + draw

    def _scored(self, batch: dict, draw: int = 0) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
        """A rollout of `batch`'s prompts, its raw scores and the scores the objective
        gets (missing-EOS penalty included)."""
        rollout = self._sample(batch, greedy=False, draw=draw)
        raw = self._score(rollout)
        return rollout, raw, apply_missing_eos_penalty(raw, rollout.ended,
                                                       self.missing_eos_penalty)

    def _extra_prompts(self, n: int, draw: int) -> dict:
        """n training prompts for extra draw `draw`, chosen without replacement by a
        generator seeded by (seed, step, draw): a resumed run draws the same."""
        pool = self.prompt_pool
        if pool is None:
            pool = self.trainer.datamodule.groups["train"]
        generator = torch.Generator().manual_seed(self._draw_seed(draw))
        order = torch.randperm(len(pool), generator=generator)[:n].tolist()
        return collate_prompts([pool[i] for i in order])

    def _dynamically_sampled(self, batch: dict, first: tuple[Rollout, torch.Tensor, torch.Tensor]
                             ) -> tuple[tuple[Rollout, torch.Tensor, torch.Tensor],
                                        dict[str, torch.Tensor]]:
        """DAPO's dynamic sampling (Yu et al., arXiv:2503.14476, 2025): keep the prompts
        whose samples did not all get the same score (the scores the objective sees);
        while fewer than the batch's prompts are kept, draw data.batch_size more prompts
        from the training set and keep theirs, at most `rollout.max_resample_rounds`
        times. When the cap is hit the step trains on the groups it kept (fewer rows;
        `dynamic_sampling/capped` is 1); if it kept none, on the first draw as it was."""
        target = len(batch["prompts"])
        kept: list[tuple[Rollout, torch.Tensor, torch.Tensor]] = []
        n_kept = dropped = draws = 0
        rollout, raw, scores = first
        while True:
            uniform = uniform_groups(scores, rollout.batch["group"])
            dropped += int(uniform.sum())
            informative = (~uniform).nonzero().flatten().tolist()[:target - n_kept]
            if informative:
                rows = torch.isin(rollout.batch["group"],
                                  torch.tensor(informative, device=scores.device))
                kept.append((select_groups(rollout, informative), raw[rows], scores[rows]))
                n_kept += len(informative)
            if n_kept >= target or draws >= self.rollout_cfg.max_resample_rounds:
                break
            draws += 1
            rollout, raw, scores = self._scored(self._extra_prompts(target, draws), draws)
        metrics = {"dynamic_sampling/dropped_groups": scores.new_tensor(float(dropped)),
                   "dynamic_sampling/draws": scores.new_tensor(float(draws)),
                   "dynamic_sampling/groups": scores.new_tensor(float(n_kept)),
                   "dynamic_sampling/capped": scores.new_tensor(float(n_kept < target))}
        if not kept:
            return first, metrics
        merged = concatenate([r for r, _, _ in kept], self.tokenizer.pad_token_id)
        return (merged, torch.cat([r for _, r, _ in kept]),
                torch.cat([s for _, _, s in kept])), metrics

    def _forward(self, rows: dict[str, torch.Tensor], grad: bool):
        """Token log-probs, entropy and values of the policy on `rows`: the one code path
        of both the Experience (no grad) and the loss (grad), so that they agree bitwise."""
        out = self._logps(self.policy, rows, grad=grad,
                          keep_hidden=self.needs.value_model == ValueModel.shared)
        values = None
        if self.value_model is not None:
            with torch.set_grad_enabled(grad):
                values = token_values(self.value_model, rows, out.hidden)
        return out, values

    def _minibatches(self, n_rows: int) -> list[list[torch.Tensor]]:
        """Per epoch, the rows of each minibatch: a fresh permutation per epoch, seeded by
        (seed, step, epoch); minibatches as equal as the rows allow."""
        epochs, n_minibatches = self.objective.schedule()
        if n_minibatches > n_rows:
            raise ValueError(f"objective '{self.objective.config.name}': {n_minibatches} "
                             f"minibatches of a rollout of {n_rows} completions")
        out = []
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(self._step_seed() * 101 + epoch)
            order = torch.randperm(n_rows, generator=generator).to(self.device)
            out.append(list(order.tensor_split(n_minibatches)))
        return out

    def experience(self, rollout: Rollout, scores: torch.Tensor, first_epoch: list[torch.Tensor]
                   ) -> tuple[Experience, torch.Tensor]:
        """The Experience of a rollout and the policy's per-row entropy (Σ over tokens),
        computed minibatch by minibatch as the first epoch will feed them."""
        batch = rollout.batch
        mask = batch["completion_mask"][:, 1:]
        # fp32 as the kernels return them, whatever default dtype Lightning's precision
        # plugin sets (bf16-true makes it bfloat16).
        logps = torch.zeros(mask.shape, dtype=torch.float32, device=self.device)
        ref = torch.zeros_like(logps) if self.needs.reference else None
        values = torch.zeros_like(logps) if self.value_model is not None else None
        entropy = torch.zeros(mask.shape[0], dtype=torch.float32, device=self.device)
        for rows in first_epoch:
            sub = {k: batch[k][rows] for k in ROW_KEYS}
            out, v = self._forward(sub, grad=False)
            logps[rows], entropy[rows] = out.token_logps, out.entropy
            if ref is not None:
                ref[rows] = self._reference_logps(sub).token_logps
            if values is not None:
                values[rows] = v
        experience = Experience(mask=mask, logps=logps, scores=scores, group=batch["group"],
                                ref_logps=ref, values=values)
        return experience, entropy

    def loss_inputs_online(self, rollout: Rollout, rows: torch.Tensor, experience: Experience,
                           advantages: Advantages) -> OnlineLogps:
        """The loss input of one minibatch: the current policy's log-probs, with gradient."""
        sub = {k: rollout.batch[k][rows] for k in ROW_KEYS}
        out, values = self._forward(sub, grad=True)

        def pick(t):
            return None if t is None else t[rows]

        return OnlineLogps(logps=out.token_logps, entropy=out.entropy,
                           mask=experience.mask[rows], old_logps=experience.logps[rows],
                           advantages=advantages.advantages[rows],
                           ref_logps=pick(experience.ref_logps), values=values,
                           old_values=pick(experience.values),
                           returns=pick(advantages.returns))

    # -- the steps ---------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        drawn = self._scored(batch)
        sampling_metrics = {}
        if self.rollout_cfg.dynamic_sampling:
            drawn, sampling_metrics = self._dynamically_sampled(batch, drawn)
        rollout, raw, scores = drawn
        minibatches = self._minibatches(len(rollout.completions))
        experience, entropy = self.experience(rollout, scores, minibatches[0])
        advantages = self.objective.advantages(experience)

        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        step_metrics: list[dict[str, torch.Tensor]] = []
        for epoch_rows in minibatches:
            for rows in epoch_rows:
                if 0 <= max_steps <= self.global_step:
                    break  # the schedule ends at max_steps, mid-rollout if need be
                out = self._checked(self.objective.loss(self.loss_inputs_online(
                    rollout, rows, experience, advantages)), "train",
                    "the policy's token log-probs")
                self.manual_backward(out.loss)  # onto no gradients: freed after each step
                optim.clip_gradients(self, optimizer, self.gradient_clip_val,
                                     self.gradient_clip_algorithm)
                optimizer.step()
                scheduler.step()
                # Freed now, not at the next minibatch: no gradients held through the
                # next rollout's generation.
                optimizer.zero_grad(set_to_none=True)
                step_metrics.append({"loss": out.loss.detach(), **out.metrics})

        metrics = self._rollout_metrics(rollout, raw, experience, entropy)
        metrics.update(sampling_metrics)
        metrics.update(advantages.metrics)
        for name in dict.fromkeys(k for m in step_metrics for k in m):
            # Means over the rollout's optimizer steps (each a minibatch mean).
            metrics[name] = torch.stack([m[name].detach().float().mean()
                                         for m in step_metrics if name in m]).mean()
        metrics.update(self.objective.after_rollout(experience))
        n_tokens = max(int(experience.mask.sum()), 1)
        loss = metrics.pop("loss", None)
        metrics = {"loss": loss, **metrics} if loss is not None else metrics
        self._log(metrics, "train", {"entropy": n_tokens}, len(batch["prompts"]))
        self.metric_log.log_learning_rate(self, optimizer.param_groups[0]["lr"])

    def _rollout_metrics(self, rollout: Rollout, raw: torch.Tensor, experience: Experience,
                         entropy: torch.Tensor) -> dict[str, torch.Tensor]:
        mask = experience.mask
        metrics = {"reward/mean": raw, "reward/std": raw.std() if raw.numel() > 1
                   else raw.new_zeros(()),
                   # Share of prompts whose samples all got the same score (what the
                   # objective sees): zero advantage under a group baseline.
                   "reward/zero_std_fraction": uniform_groups(
                       experience.scores, experience.group).float().mean(),
                   "response/length": rollout.lengths.float(),
                   "response/length_max": rollout.lengths.max().float(),
                   "response/ended": rollout.ended.float(),
                   # No EOS within rollout.max_new_tokens: cut.
                   "response/truncated": (~rollout.ended).float(),
                   # Token-weighted (the module weighs it by the rollout's tokens).
                   "entropy": entropy.sum() / mask.sum().clamp(min=1)}
        if experience.ref_logps is not None:
            # Σ_t log π/π_ref over each sampled completion: the k1 estimate of the sequence
            # KL(π ‖ π_ref), unbiased here because the completions are samples of π.
            metrics["kl"] = (kl_estimate(experience.logps, experience.ref_logps,
                                         KLEstimator.k1) * mask).sum(1)
        return metrics

    def validation_step(self, batch, batch_idx):
        rollout = self._sample(batch, greedy=True)
        raw = self._score(rollout)
        self._log({"reward/mean": raw, "response/length": rollout.lengths.float(),
                   "response/ended": rollout.ended.float()}, "val", {},
                  len(batch["prompts"]))
