"""Reward-model losses: Bradley–Terry by hand, margins and centring; K-wise at K=2 is BT."""

import math

import pytest
import torch

from prefopt.objective import PairwiseScores, RankedScores
from prefopt.plugins.reward_models import RewardBT, RewardPL, bradley_terry_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_bradley_terry_by_hand():
    # r_w = 2.0, r_l = 0.5, margin 1.0: -log σ(2.0 - 0.5 - 1.0) = log(1 + e^-0.5) = 0.4740769842
    # centring η = 0.1: + 0.1 (2.0 + 0.5)² = 0.625  ->  1.0990769842
    assert bradley_terry_loss(t(2.0), t(0.5), t(1.0)).item() == \
        pytest.approx(0.4740769842, abs=1e-9)
    assert bradley_terry_loss(t(2.0), t(0.5), t(1.0), 0.1).item() == \
        pytest.approx(1.0990769842, abs=1e-9)
    # without the margin: log(1 + e^-1.5) = 0.2014132779
    out = RewardBT(RewardBT.Config(use_margins=False)).loss(PairwiseScores(t(2.0), t(0.5),
                                                                           t(1.0)))
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.5)), abs=1e-12)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert out.metrics["reward_bt/reward_mean"].item() == pytest.approx(1.25)


def test_kwise_reward_loss_at_k2_is_bradley_terry():
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    bt = RewardBT(RewardBT.Config()).loss(PairwiseScores(chosen, rejected, torch.zeros(6)))
    scores = torch.stack([chosen, rejected], 1).reshape(-1)
    pl = RewardPL(RewardPL.Config()).loss(RankedScores(scores, torch.tensor([1, 2]).repeat(6),
                                                       torch.arange(6).repeat_interleave(2)))
    assert pl.loss.item() == pytest.approx(bt.loss.item(), rel=1e-6)
    torch.testing.assert_close(pl.metrics["rewards/accuracies"],
                               bt.metrics["rewards/accuracies"])


def test_kwise_reward_loss_is_order_invariant():
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(8, generator=gen)
    ranks = torch.tensor([1, 2, 3, 4, 2, 1, 3, 3])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    objective = RewardPL(RewardPL.Config())
    base = objective.loss(RankedScores(scores, ranks, group)).loss
    perm = torch.randperm(8, generator=gen)
    assert objective.loss(RankedScores(scores[perm], ranks[perm], group[perm])).loss.item() == \
        pytest.approx(base.item(), rel=1e-6)


def test_reward_models_train_a_scalar_head_without_reference():
    for cls in (RewardBT, RewardPL):
        needs = cls(cls.Config()).needs()
        assert needs.reward_model and not needs.reference


def test_plackett_luce_centring_at_k2_is_a_quarter_of_bradley_terrys():
    # reward_pl penalises η (mean of a prompt's rewards)² = η ((r_w + r_l) / 2)², a quarter
    # of reward_bt's η (r_w + r_l)²: K = 2 is Bradley–Terry only at η = 0 (README).
    chosen, rejected = t(2.0, -1.0), t(0.5, 0.0)
    eta = 0.1
    bt = [RewardBT(RewardBT.Config(center_coefficient=c)).loss(
        PairwiseScores(chosen, rejected, torch.zeros(2))).loss.item() for c in (0.0, eta)]
    scores = torch.stack([chosen, rejected], 1).reshape(-1)
    ranks, group = torch.tensor([1, 2, 1, 2]), torch.tensor([0, 0, 1, 1])
    pl = [RewardPL(RewardPL.Config(center_coefficient=c)).loss(
        RankedScores(scores, ranks, group)).loss.item() for c in (0.0, eta)]
    # centring terms: BT mean of η (2.5², 1²) = 0.1 · 7.25 / 2 = 0.3625; PL a quarter: 0.090625
    assert bt[1] - bt[0] == pytest.approx(0.3625)
    assert pl[1] - pl[0] == pytest.approx(0.090625)
    assert pl[0] == pytest.approx(bt[0])
