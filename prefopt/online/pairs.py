"""Online pairwise training: any pairwise objective on pairs the policy samples itself.

Online DPO (Guo et al., "Direct Language Model Alignment from Online AI Feedback",
arXiv:2402.04792, 2024): at every step the current policy π_θ samples completions of each
prompt, a judge (here any reward source of prefopt.online.rewards: a function, a
verifiable reward, a trained reward model) prefers one, and the offline DPO loss

    L = -log σ(β [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))])

is taken on those fresh pairs instead of on a fixed data set. Nothing in that loop is
DPO's own: the pairs are fed to the objective exactly as recorded pairs are
(`PreferenceModule.loss_inputs`, the pairwise batch format), so every objective whose
batch format is pairwise (dpo, ipo, the zoo, third-party plugins) trains online too.

One training step (`training_step`), for the batch's P prompts:

1. sample k = `rollout.num_samples` completions of each (`rollout.sample`, the online
   module's sampler; k = 2 is the paper's setting), seeded by (run seed, epoch, batch
   index) only, so a rerun or a resumed run samples the same (the optimizer step does not
   enter: a skipped step must not change what later batches sample);
2. score them with the reward source (record fields reach reward functions as keyword
   arguments), minus `reward.missing_eos_penalty` where a sample did not end;
3. judge (`judge`): per prompt, chosen = its highest-scored sample, rejected = its
   lowest (the first such sample on equal scores); a prompt whose samples all score the
   same is a *tie* and gives no pair (a tie carries no preference);
4. the objective's loss on the judged pairs, one optimizer step (Lightning's automatic
   optimisation, so gradient accumulation and clipping work as offline). A batch of only
   ties returns no loss: Lightning then runs no backward, and the optimizer, finding no
   gradient, leaves every weight and its moments as they were; the batch still counts as
   a step of `trainer.max_steps` and of the learning-rate schedule (tested).

The reference is a frozen copy of the initial policy, as for offline DPO
(`reference=cached` is refused: the completions change at every step). Log-probs are the
policy's own (temperature 1), as for recorded pairs: the samples are data to the objective.

Logged under `train/`: `reward/mean` (every sample), `reward/chosen`, `reward/rejected`
(the judged pairs, after the EOS penalty), `pairs/ties` (the share of prompts that tied),
`pairs/count`, and the objective's own metrics and `logps/*`, `kl`, `entropy` as offline.
Validation is offline validation: the objective on the data's held-out preference pairs
(`val/rewards/accuracies` for DPO-like objectives), so one number compares a model before
and after, online or offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytorch_lightning as pl
import torch

from prefopt.data.collate import collate_groups
from prefopt.data.datamodule import DataConfig, PreferenceDataModule
from prefopt.data.prompts import PromptDataModule
from prefopt.data.tokenize import EncodedGroup
from prefopt.objective import BatchFormat, Objective
from prefopt.online.rewards import apply_missing_eos_penalty
from prefopt.online.rollout import Rollout, RolloutConfig, check_config
from prefopt.online.scoring import SamplesAndScores
from prefopt.training.module import PreferenceModule


def refusal(objective: Objective) -> str | None:
    """Why `objective` cannot train on judged pairs (None if it can), in one line."""
    name, fmt = objective.config.name, objective.batch_format
    if fmt != BatchFormat.PAIRWISE:
        return (f"online=true trains pairwise objectives on judged samples, but objective "
                f"'{name}' consumes {fmt.value} records; choose a pairwise objective (dpo, "
                "ipo, ...: prefopt-plugins lists each one's format) or drop online=true")
    if objective.needs().reward_model:
        return (f"online=true trains a policy on its own samples, but objective '{name}' "
                "trains a reward model; drop online=true")
    return None


@dataclass
class JudgedPairs:
    """The pairs judged from a rollout of P prompts × k samples (rows prompt-major)."""

    prompts: list[int]  # [N] which prompt each pair is of
    chosen: list[int]  # [N] rollout row of the chosen sample
    rejected: list[int]  # [N] rollout row of the rejected sample
    ties: int  # prompts whose samples all scored the same: no pair

    def __len__(self) -> int:
        return len(self.chosen)


def judge(scores: torch.Tensor, k: int) -> JudgedPairs:
    """Per prompt (k consecutive scores), its best sample over its worst; the first of
    equal scores; no pair where best and worst score the same (a tie)."""
    if scores.ndim != 1 or scores.numel() % k:
        raise ValueError(f"{tuple(scores.shape)} scores are not prompts × {k} samples")
    pairs = JudgedPairs([], [], [], 0)
    for prompt, group in enumerate(scores.detach().cpu().view(-1, k).tolist()):
        best = max(range(k), key=lambda i: (group[i], -i))  # highest, first on equals
        worst = min(range(k), key=lambda i: (group[i], i))  # lowest, first on equals
        if group[best] == group[worst]:
            pairs.ties += 1
            continue
        pairs.prompts.append(prompt)
        pairs.chosen.append(prompt * k + best)
        pairs.rejected.append(prompt * k + worst)
    return pairs


def pair_groups(rollout: Rollout, prompt_ids: list[list[int]], pairs: JudgedPairs
                ) -> list[EncodedGroup]:
    """The judged pairs as encoded pairwise records (prompt, (chosen, rejected)): the
    sampled token ids themselves, never re-tokenised text."""
    batch = rollout.batch
    ids, mask = batch["input_ids"].cpu(), batch["completion_mask"].cpu()

    def completion(row: int) -> list[int]:
        return ids[row][mask[row]].tolist()

    return [EncodedGroup(prompt_ids[p], (completion(c), completion(r)), ranks=(0, 1))
            for p, c, r in zip(pairs.prompts, pairs.chosen, pairs.rejected)]


class OnlinePairsModule(SamplesAndScores, PreferenceModule):
    """A PreferenceModule whose training pairs are sampled and judged at every step (the
    module docstring); validation is the offline one, on held-out recorded pairs."""

    KEEPS_TRAINING_REFERENCES = False  # new samples at every step: none comes again

    def __init__(self, policy, reference, objective: Objective, optimizer, scheduler,
                 tokenizer, reward, rollout: RolloutConfig, logprob_impl: str = "auto",
                 seed: int = 0, missing_eos_penalty: float | None = None):
        reason = refusal(objective)
        if reason:
            raise ValueError(reason)
        check_config(rollout)
        if rollout.num_samples < 2:
            raise ValueError(f"rollout.num_samples={rollout.num_samples}: online pairs need "
                             "two samples of each prompt at least; set rollout.num_samples=2")
        super().__init__(policy, reference, objective, optimizer, scheduler,
                         logprob_impl=logprob_impl)
        self.tokenizer, self.reward, self.rollout_cfg = tokenizer, reward, rollout
        self.seed, self.missing_eos_penalty = seed, missing_eos_penalty

    # -- sampling and judging ----------------------------------------------------------

    def _batch_seed(self, batch_idx: int) -> int:
        """The seed of one batch's sampling: (seed, epoch, batch index) only."""
        epoch = self.current_epoch if self._trainer is not None else 0
        return (self.seed * 1_000_003 + epoch) * 1_000_033 + batch_idx

    def sample_batch(self, batch: dict, batch_idx: int) -> Rollout:
        return self._seeded_sample(batch, self._batch_seed(batch_idx))

    def judged_batch(self, batch: dict, batch_idx: int
                     ) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
        """(the pairwise batch of the judged pairs, or None when there is none to train
        on; the rollout's metrics)."""
        rollout = self.sample_batch(batch, batch_idx)
        raw = self._score(rollout)
        scores = apply_missing_eos_penalty(raw, rollout.ended, self.missing_eos_penalty)
        pairs = judge(scores, self.rollout_cfg.num_samples)
        n_prompts = len(batch["prompts"])
        metrics = {"reward/mean": raw, "pairs/ties": torch.tensor(pairs.ties / n_prompts),
                   "pairs/count": torch.tensor(float(len(pairs))),
                   "response/length": rollout.lengths.float()}
        if len(pairs):
            metrics["reward/chosen"] = scores[pairs.chosen]
            metrics["reward/rejected"] = scores[pairs.rejected]
        # An objective that pairs completions across a batch (needs().mismatched_pairs)
        # needs two pairs at least.
        if len(pairs) < (2 if self.needs.mismatched_pairs else 1):
            return None, metrics
        groups = pair_groups(rollout, batch["prompt_ids"], pairs)
        collated = collate_groups(groups, self.tokenizer.pad_token_id,
                                  mismatched=self.needs.mismatched_pairs)
        return {k: v.to(self.device) for k, v in collated.items()}, metrics

    # -- the steps ---------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        pair_batch, metrics = self.judged_batch(batch, batch_idx)
        self._log(metrics, "train", {}, len(batch["prompts"]))
        if pair_batch is None:
            return None  # only ties: no backward, so no gradient and no update
        loss = self._step(pair_batch, "train")
        self.metric_log.log_learning_rate(self, self.optimizers().param_groups[0]["lr"])
        return loss


class OnlinePairsData(pl.LightningDataModule):
    """Training prompts (the data read as prompt records: any record with a `prompt`,
    its other fields kept for the reward) and held-out preference pairs (the data's val
    split read as pairwise records) for validation."""

    def __init__(self, cfg: DataConfig, tokenizer, max_new_tokens: int, seed: int = 0,
                 mismatched: bool = False):
        super().__init__()
        self.prompts = PromptDataModule(cfg, tokenizer, max_new_tokens, seed)
        self.pairs = PreferenceDataModule(cfg, tokenizer, fmt="pairwise", seed=seed,
                                          mismatched=mismatched)
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.groups: dict[str, list] = {}
        self.reports: dict = {}

    def setup(self, stage: str | None = None) -> None:
        if self.groups:
            return
        self.prompts.setup(stage)
        self.pairs.setup(stage)
        self.groups = {"train": self.prompts.groups["train"], "val": self.pairs.groups["val"]}
        self.reports = {"train": self.prompts.reports["train"],
                        "val": self.pairs.reports["val"]}

    def train_dataloader(self):
        self.prompts.trainer = self.trainer  # its resumable sampler reads the fit loop
        return self.prompts.train_dataloader()

    def val_dataloader(self):
        return self.pairs.val_dataloader()

