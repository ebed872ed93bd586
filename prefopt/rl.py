"""The tensor math of online RL: KL estimators, baselines, GAE, whitening, aggregation.

Pure functions over per-token tensors, shared by the online objectives (`reinforce`,
`ppo`) and any third-party one. Token tensors are [R, L]: R completions, L positions, with
a boolean `mask` [R, L] marking each completion's tokens (right-padded: a completion's
tokens are contiguous and every later position of the row is off the mask).
"""

from __future__ import annotations

import enum

import torch


class KLEstimator(str, enum.Enum):
    """Per-token estimators of KL(π ‖ π_ref) from a token y ~ π (Schulman, "Approximating
    KL Divergence", 2020). With log r = log π_ref(y) − log π(y):

    k1 = −log r            unbiased, high variance, can be negative;
    k3 = (r − 1) − log r   unbiased, always ≥ 0, lower variance.
    """

    k1 = "k1"
    k3 = "k3"


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: KLEstimator | str
                ) -> torch.Tensor:
    """The estimator's value per token (elementwise; callers mask)."""
    log_ratio = ref_logps - logps  # log r = log π_ref/π
    if KLEstimator(estimator) == KLEstimator.k1:
        return -log_ratio
    # expm1 keeps precision when π ≈ π_ref, where the estimator is a difference of
    # nearly equal numbers.
    return torch.expm1(log_ratio) - log_ratio


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
                  ) -> torch.Tensor:
    """(x − mean) / std over the masked entries (population std), zero off the mask."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def group_sizes(group: torch.Tensor) -> torch.Tensor:
    """[R] the number of completions that share each completion's prompt."""
    counts = torch.zeros(int(group.max()) + 1, dtype=torch.long, device=group.device)
    counts.index_add_(0, group, torch.ones_like(group))
    return counts[group]


def _group_sum(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(int(group.max()) + 1, dtype=values.dtype, device=values.device)
    return sums.index_add(0, group, values)[group]


def uniform_groups(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """[G] whether all the samples of each prompt got exactly the same reward: a group
    baseline (RLOO, GRPO) then gives every one of them a zero advantage, so the group
    teaches nothing (DAPO's dynamic sampling drops such groups)."""
    n_groups = int(group.max()) + 1
    high = rewards.new_full((n_groups,), -torch.inf).scatter_reduce(0, group, rewards, "amax")
    low = rewards.new_full((n_groups,), torch.inf).scatter_reduce(0, group, rewards, "amin")
    return high == low


def leave_one_out_advantages(rewards: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RLOO (Kool et al., 2019; Ahmadian et al., 2024): each of the k samples of a prompt
    is baselined by the mean reward of the other k − 1,

        A_i = r_i − (Σ_j r_j − r_i) / (k − 1)  =  k/(k − 1) · (r_i − mean_j r_j),

    an unbiased baseline, since it does not depend on sample i. Needs k ≥ 2 everywhere."""
    k = group_sizes(group)
    if bool((k < 2).any()):
        raise ValueError("the leave-one-out baseline needs at least 2 samples per prompt "
                         "(rollout.num_samples >= 2)")
    k = k.to(rewards.dtype)
    return rewards - (_group_sum(rewards, group) - rewards) / (k - 1)


def group_normalised_advantages(rewards: torch.Tensor, group: torch.Tensor,
                                eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """GRPO (Shao et al., 2024, DeepSeekMath): A_i = (r_i − mean_g) / (std_g + eps), with
    the mean and the sample std (Bessel's n − 1, as torch.std) over the prompt's k
    samples; `scale=False` keeps only the mean subtraction (Dr. GRPO, Liu et al., 2025)."""
    k = group_sizes(group)
    if bool((k < 2).any()):
        raise ValueError("group normalisation needs at least 2 samples per prompt "
                         "(rollout.num_samples >= 2)")
    k = k.to(rewards.dtype)
    mean = _group_sum(rewards, group) / k
    centred = rewards - mean
    if not scale:
        return centred
    std = torch.sqrt(_group_sum(centred ** 2, group) / (k - 1))
    return centred / (std + eps)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) per token.

    δ_t = r_t + γ V_{t+1} − V_t, with V = 0 after a completion's last token;
    A_t = Σ_l (γλ)^l δ_{t+l} over the completion;  returns G_t = A_t + V_t.
    Both are zero off the mask. `rewards`, `values`: [R, L]."""
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        # After a completion's last token (off the mask) the next value and the carried
        # sum are 0: the episode has ended.
        if t + 1 < length:
            following, next_value = mask[:, t + 1], values[:, t + 1]
        else:
            following = next_value = torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * following * running
        advantages[:, t] = running * mask[:, t]
    return advantages, (advantages + values) * mask


def explained_variance(predicted: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                       ) -> torch.Tensor:
    """1 − Var(target − predicted) / Var(target) over the masked entries: 1 is a perfect
    value function, 0 no better than a constant, negative worse."""
    mask = mask.to(target.dtype)
    residual = target - predicted
    var_target = masked_mean((target - masked_mean(target, mask)) ** 2, mask)
    var_residual = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return 1 - var_residual / var_target.clamp(min=1e-12)


class Aggregation(str, enum.Enum):
    """How per-token losses ℓ_{i,t} of a batch become one number.

    token_mean:    Σ_i Σ_t ℓ_{i,t} / Σ_i T_i  (every token weighs the same; DAPO)
    sequence_mean: mean_i (Σ_t ℓ_{i,t} / T_i)  (every completion weighs the same; GRPO)
    sequence_sum:  mean_i Σ_t ℓ_{i,t}  (the whole completion is one action: REINFORCE's
                   estimator of ∇ E[r], as RLOO uses it)
    """

    token_mean = "token_mean"
    sequence_mean = "sequence_mean"
    sequence_sum = "sequence_sum"


def aggregate(losses: torch.Tensor, mask: torch.Tensor, how: Aggregation | str
              ) -> torch.Tensor:
    mask = mask.to(losses.dtype)
    how = Aggregation(how)
    if how == Aggregation.token_mean:
        return masked_mean(losses, mask)
    per_sequence = (losses * mask).sum(1)
    if how == Aggregation.sequence_mean:
        per_sequence = per_sequence / mask.sum(1).clamp(min=1)
    return per_sequence.mean()


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: float, n: int) -> float:
    """The proportional controller of Ziegler et al. (2019): with
    e = clip(KL / target − 1, −0.2, 0.2), β ← β (1 + e · n / horizon), n the number of
    completions in the rollout, so β moves towards the value that keeps KL at target."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n / horizon)
