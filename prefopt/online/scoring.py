"""What both online modules (`OnlineModule`, `OnlinePairsModule`) do around a rollout:
sample with a seed of their own choosing without disturbing any other random state, call
the reward source with its answer checked, and keep a reward model on the policy's device.

A mixin of LightningModules that set `policy`, `tokenizer`, `reward` and `rollout_cfg`.
"""

from __future__ import annotations

import torch

from prefopt.online.rewards import RewardError
from prefopt.online.rollout import Rollout, sample


class SamplesAndScores:
    def _seeded_sample(self, batch: dict, seed: int, greedy: bool = False) -> Rollout:
        """Samples of `batch`'s prompts drawn under `seed` alone: the caller's seed scheme
        (step, batch index, draw) makes a resumed run sample what an uninterrupted one did."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # no other random state disturbed
            torch.manual_seed(seed)
            return sample(self.policy, self.tokenizer, batch["prompts"], batch["prompt_ids"],
                          self.rollout_cfg, greedy=greedy)

    def _score(self, rollout: Rollout) -> torch.Tensor:
        """[R] the reward source's scores of the rollout's completions, as fp32 on the
        policy's device; a source that answers with another shape is a RewardError."""
        scores = self.reward(rollout.prompts, rollout.completions)
        if scores.shape != (len(rollout.completions),):
            raise RewardError(f"the reward source returned {tuple(scores.shape)} scores for "
                              f"{len(rollout.completions)} samples")
        return scores.to(self.device, torch.float32)

    def on_fit_start(self) -> None:
        self._reward_to_device()

    def on_validation_start(self) -> None:
        self._reward_to_device()

    def _reward_to_device(self) -> None:
        # A reward model is not a submodule (it is not trained or checkpointed): move it
        # to the policy's device by hand.
        if hasattr(self.reward, "to"):
            self.reward.to(self.device)
