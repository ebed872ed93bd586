"""K-wise Plackett–Luce DPO: hand-derived values, K=2 equals DPO, order invariance, ties."""

import math

import pytest
import torch

from prefopt.objective import RankedLogps
from prefopt.plugins.dpo import dpo_loss
from prefopt.plugins.kwise import KWise, plackett_luce_nll, ranking_metrics


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_three_items_by_hand():
    # rewards a = 1, b = 0, c = -1, ranked a > b > c:
    # L = -[(1 - log(e + 1 + e⁻¹)) + (0 - log(1 + e⁻¹)) + 0]
    #   = log 4.0861612696 - 1 + log 1.3678794412 = 1.4076059645 - 1 + 0.3132616875
    #   = 0.7208676520
    loss = plackett_luce_nll(t(1.0, 0.0, -1.0), t(1, 2, 3, dtype=torch.long),
                             torch.zeros(3, dtype=torch.long))
    expected = math.log(math.e + 1 + math.exp(-1)) - 1 + math.log(1 + math.exp(-1))
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.7208676520, abs=1e-9)


def test_ties_by_breslow_rule():
    # ranks (1, 1, 2): a and b tie on top; each one's denominator is {a, b, c}:
    # L = -[(1 - log(e + 1 + e⁻¹)) + (0 - log(e + 1 + e⁻¹)) + 0] = 2 log(4.0861612696) - 1
    loss = plackett_luce_nll(t(1.0, 0.0, -1.0), t(1, 1, 2, dtype=torch.long),
                             torch.zeros(3, dtype=torch.long))
    assert loss.item() == pytest.approx(2 * math.log(math.e + 1 + math.exp(-1)) - 1, abs=1e-12)


def test_k2_equals_dpo_exactly():
    gen = torch.Generator().manual_seed(0)
    pol = -torch.rand(2, 8, generator=gen, dtype=torch.float64) * 10
    ref = -torch.rand(2, 8, generator=gen, dtype=torch.float64) * 10
    dpo, chosen_r, rejected_r = dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.3)
    # Group-major rows: (chosen_0, rejected_0, chosen_1, ...), ranks 1 and 2.
    logps, ref_logps = pol.T.reshape(-1), ref.T.reshape(-1)
    group = torch.arange(8).repeat_interleave(2)
    ranks = torch.tensor([1, 2]).repeat(8)
    out = KWise(KWise.Config(beta=0.3)).loss(RankedLogps(logps, torch.ones(16), ranks, group,
                                                          ref_logps))
    assert out.loss.item() == pytest.approx(dpo.mean().item(), abs=1e-12)
    torch.testing.assert_close(out.metrics["rewards/chosen"].double(), chosen_r)
    torch.testing.assert_close(out.metrics["rewards/margins"].double(), chosen_r - rejected_r)


def test_invariant_to_listing_order():
    gen = torch.Generator().manual_seed(1)
    rewards = torch.randn(9, generator=gen, dtype=torch.float64)
    ranks = t(3, 1, 2, 2, 1, 4, 1, 3, 2, dtype=torch.long)
    group = t(0, 0, 0, 1, 1, 1, 1, 2, 2, dtype=torch.long)
    base = plackett_luce_nll(rewards, ranks, group)
    perm = torch.randperm(9, generator=gen)
    torch.testing.assert_close(plackett_luce_nll(rewards[perm], ranks[perm], group[perm]), base)
    metrics = ranking_metrics(rewards, ranks, group)
    shuffled = ranking_metrics(rewards[perm], ranks[perm], group[perm])
    for name in metrics:
        torch.testing.assert_close(shuffled[name], metrics[name])


def test_varying_k_and_concordance():
    # group 0: K=3 ranks (1,2,3) with rewards (0, 1, -1): pairs (a,b) wrong, (a,c) right,
    # (b,c) right -> 2/3. group 1: K=2 ranks (1,2), rewards (5, 5): tie -> 1/2.
    metrics = ranking_metrics(t(0.0, 1.0, -1.0, 5.0, 5.0), t(1, 2, 3, 1, 2, dtype=torch.long),
                              t(0, 0, 0, 1, 1, dtype=torch.long))
    torch.testing.assert_close(metrics["rewards/accuracies"], t(2 / 3, 0.5))
    torch.testing.assert_close(metrics["rewards/margins"], t(1.0, 0.0))


def test_prompts_without_an_ordered_pair_are_left_out_of_accuracy():
    # group 0: ranks (1, 2, 3), rewards (2, 1, 0): all 3 pairs right -> 1.
    # group 1: one completion; group 2: two completions tied at rank 1. Neither holds a pair
    # with a preference, so neither has an accuracy: the mean is 1, not (1 + 0 + 0) / 3.
    metrics = ranking_metrics(t(2.0, 1.0, 0.0, 4.0, 3.0, 5.0),
                              t(1, 2, 3, 1, 1, 1, dtype=torch.long),
                              t(0, 0, 0, 1, 2, 2, dtype=torch.long))
    torch.testing.assert_close(metrics["rewards/accuracies"], t(1.0))
    # The per-prompt rewards still cover every prompt (best minus worst: 2, 0, 0).
    torch.testing.assert_close(metrics["rewards/margins"], t(2.0, 0.0, 0.0))


def test_a_policy_equal_to_its_reference_scores_one_half():
    # Every implicit reward is 0: each ordered pair is a tie, worth ½ (README, metrics).
    logps = t(-3.0, -4.0, -5.0, -2.0, -6.0, -6.5)
    ranks = t(1, 2, 3, 1, 1, 1, dtype=torch.long)
    group = t(0, 0, 0, 1, 2, 2, dtype=torch.long)
    out = KWise(KWise.Config(beta=0.1)).loss(RankedLogps(logps, torch.ones(6), ranks, group,
                                                         logps.clone()))
    assert out.metrics["rewards/accuracies"].mean().item() == 0.5
