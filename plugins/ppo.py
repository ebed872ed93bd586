"""PPO: proximal policy optimisation with a value head, GAE and KL control.

Schulman et al., "Proximal Policy Optimization Algorithms", arXiv:1707.06347 (2017), as
applied to language models by Ziegler et al., "Fine-Tuning Language Models from Human
Preferences", arXiv:1909.08593 (2019) and Ouyang et al. (InstructGPT, 2022). Each sampled
completion is an episode whose actions are its tokens. Per token t:

    r_t = −β k(t) + [t = last] · score     k(t): a per-token KL(π_old ‖ π_ref) estimate
    δ_t = r_t + γ V(s_{t+1}) − V(s_t)          (V = 0 after the last token)
    A_t = Σ_l (γλ)^l δ_{t+l}   (GAE, Schulman et al., 2016),  G_t = A_t + V(s_t)

Advantages are whitened over the rollout's tokens (`whiten_advantages`). Then `epochs`
passes over the rollout in `minibatches`, each step minimising, as token means,

    ρ_t     = π_θ(y_t) / π_old(y_t)
    L_clip  = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε))
    L_V     = ½ max((V_θ − G_t)², (V_old + clip(V_θ − V_old, −ε_V, ε_V) − G_t)²)
    L       = L_clip + c_V L_V − c_H H(π_θ(· | s_t))

β is fixed, or adaptive (`target_kl`): after each rollout the proportional controller of
Ziegler et al. moves β towards the value that keeps the rollout's KL at the target.
The value function is a head on the policy's trunk (`value_model=shared`) or on a
separate copy of the initial trunk (`separate`).

Metrics: `ppo/clip_fraction` (share of tokens whose ratio was clipped), `ppo/approx_kl`
(mean k3 estimate of KL(π_old ‖ π_θ) over the minibatch), `ppo/value_loss`,
`ppo/policy_loss`, `ppo/explained_variance` (of the returns by the old values),
`ppo/value_clip_fraction`, `ppo/kl_coef`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.objective import (
    Advantages,
    Experience,
    LossOutput,
    Needs,
    ObjectiveConfig,
    OnlineLogps,
    OnlineObjective,
    ValueModel,
    require_non_negative,
)
from prefopt.rl import (
    KLEstimator,
    adaptive_kl_coef,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
)


def token_rewards(scores: torch.Tensor, token_kl: torch.Tensor | None, mask: torch.Tensor,
                  kl_coef: float) -> torch.Tensor:
    """[R, L]: −β k(t) on every completion token, plus the score on the last one."""
    mask_f = mask.to(scores.dtype)
    rewards = torch.zeros_like(mask_f)
    if token_kl is not None:
        rewards = -kl_coef * token_kl * mask_f
    last = mask.long().cumsum(1).argmax(1)  # the first position where the count peaks
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


def clipped_policy_loss(logps, old_logps, advantages, mask, clip: float):
    """(token-mean L_clip, ratios, clipped-token mask)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, ratio, (clipped > unclipped) & mask


def clipped_value_loss(values, old_values, returns, mask, clip: float | None):
    """(token-mean L_V, clipped-token mask)."""
    squared = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(squared, mask), torch.zeros_like(mask)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped_squared = (clipped_values - returns) ** 2
    return (0.5 * masked_mean(torch.maximum(squared, clipped_squared), mask),
            (clipped_squared > squared) & mask)


class PPO(OnlineObjective):
    """PPO-clip with GAE, a value head, an entropy bonus and fixed or adaptive KL control."""

    description = "PPO-clip on sampled completions: value head, GAE, KL to the reference"

    @dataclass
    class Config(ObjectiveConfig):
        kl_coef: float = 0.05
        """β: per-token KL penalty in the reward (initial value when adaptive)."""
        kl_estimator: KLEstimator = KLEstimator.k1
        """Per-token KL estimate in the reward: k1 (log π/π_ref) or k3."""
        target_kl: Optional[float] = None
        """Adaptive KL: the rollout KL (Σ_t k1 per completion) to hold; empty: fixed β."""
        kl_horizon: float = 10000.0
        """Horizon of the adaptive controller, in completions."""
        gamma: float = 1.0
        lam: float = 0.95
        """GAE λ."""
        clip_ratio: float = 0.2
        """ε of the clipped probability ratio."""
        clip_value: Optional[float] = 0.2
        """ε_V of the clipped value loss; empty: no value clipping."""
        value_coef: float = 0.1
        """c_V: weight of the value loss."""
        entropy_coef: float = 0.0
        """c_H: weight of the entropy bonus (0: none)."""
        whiten_advantages: bool = True
        epochs: int = 4
        """Passes over each rollout."""
        minibatches: int = 1
        """Optimizer steps per pass (the rollout split in this many minibatches)."""
        value_model: ValueModel = ValueModel.shared
        """shared: a head on the policy trunk; separate: a copy of the trunk with a head."""

    def __init__(self, config: Config):
        super().__init__(config)
        c = config
        require_non_negative(c, "kl_coef")
        for name in ("clip_ratio", "epochs", "minibatches", "kl_horizon"):
            if not getattr(c, name) > 0:
                raise ValueError(f"objective.{name} must be > 0, got {getattr(c, name)}")
        if c.target_kl is not None and not (c.target_kl > 0 and c.kl_coef > 0):
            raise ValueError("objective.target_kl (adaptive KL) needs target_kl > 0 and an "
                             f"initial kl_coef > 0, got {c.target_kl} and {c.kl_coef}")
        if not (0 <= c.gamma <= 1 and 0 <= c.lam <= 1):
            raise ValueError(f"objective.gamma and objective.lam must be in [0, 1], got "
                             f"{c.gamma}, {c.lam}")
        self.kl_coef = c.kl_coef

    def needs(self) -> Needs:
        c = self.config
        return Needs(reference=c.kl_coef > 0, token_logps=True, entropy=c.entropy_coef != 0,
                     value_model=ValueModel(c.value_model))

    def schedule(self) -> tuple[int, int]:
        return self.config.epochs, self.config.minibatches

    def advantages(self, experience: Experience) -> Advantages:
        c, mask = self.config, experience.mask
        token_kl = None
        if self.kl_coef > 0:
            token_kl = kl_estimate(experience.logps, experience.ref_logps, c.kl_estimator)
        rewards = token_rewards(experience.scores, token_kl, mask, self.kl_coef)
        advantages, returns = gae(rewards, experience.values, mask, c.gamma, c.lam)
        metrics = {"ppo/explained_variance": explained_variance(experience.values, returns,
                                                                mask)}
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Advantages(advantages=advantages, returns=returns, rewards=(rewards * mask).sum(1),
                          metrics=metrics)

    def loss(self, inputs: OnlineLogps) -> LossOutput:
        c, mask = self.config, inputs.mask
        policy_loss, ratio, clipped = clipped_policy_loss(
            inputs.logps, inputs.old_logps, inputs.advantages, mask, c.clip_ratio)
        value_loss, value_clipped = clipped_value_loss(
            inputs.values, inputs.old_values, inputs.returns, mask, c.clip_value)
        tokens = mask.sum().clamp(min=1)
        entropy = inputs.entropy.sum() / tokens  # per-token mean entropy of π_θ
        loss = policy_loss + c.value_coef * value_loss - c.entropy_coef * entropy
        # k3 estimate of KL(π_old ‖ π_θ) on the samples of π_old (Schulman, 2020): π_old
        # samples, π_θ plays the reference's part.
        approx_kl = kl_estimate(inputs.old_logps, inputs.logps.detach(), KLEstimator.k3)
        mask_f = mask.float()
        metrics = {
            "ppo/policy_loss": policy_loss.detach(),
            "ppo/value_loss": value_loss.detach(),
            "ppo/clip_fraction": clipped.float().sum() / tokens,
            "ppo/value_clip_fraction": value_clipped.float().sum() / tokens,
            "ppo/approx_kl": approx_kl.mul(mask_f).sum() / tokens,
            "ppo/ratio": (ratio.detach() * mask_f).sum() / tokens,
        }
        return LossOutput(loss, metrics)

    def after_rollout(self, experience: Experience) -> dict[str, torch.Tensor]:
        c = self.config
        coef = experience.scores.new_tensor(self.kl_coef)  # on the metrics' device
        if c.target_kl is not None and experience.ref_logps is not None:
            kl = kl_estimate(experience.logps, experience.ref_logps, KLEstimator.k1)
            sequence_kl = float((kl * experience.mask).sum(1).mean())
            self.kl_coef = adaptive_kl_coef(self.kl_coef, sequence_kl, c.target_kl,
                                            c.kl_horizon, len(experience.scores))
        return {"ppo/kl_coef": coef}

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = state.get("kl_coef", self.config.kl_coef)
