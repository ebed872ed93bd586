"""AOT (paired and unpaired) against hand derivations, the quantile-matching definition,
and TRL's `aot` / `aot_unpaired`."""

import pytest
import torch
import torch.nn.functional as F

from prefopt.objective import PairwiseLogps
from prefopt.plugins.aot import AOT, Form, aot_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# Two pairs, β = 1.
#   policy:    chosen (-1, -4), rejected (-3, -2)  ->  u = chosen - rejected = (2, -2)
#   reference: chosen (-2, -2), rejected (-2, -3)  ->  v = (0, 1)
#   ρ_w = (1, -2), ρ_l = (-1, 1)
INPUTS = PairwiseLogps(chosen=t(-1.0, -4.0), rejected=t(-3.0, -2.0), chosen_tokens=t(1, 1),
                       rejected_tokens=t(1, 1), ref_chosen=t(-2.0, -2.0),
                       ref_rejected=t(-2.0, -3.0))


def test_paired_matches_hand_derivation():
    # sort(u) = (-2, 2), sort(v) = (0, 1) -> δ = (-2, 1);
    # L = ½ (log(1 + e^2) + log(1 + e^-1)) = ½ (2.1269280110 + 0.3132616875) = 1.2200948493.
    # Pair by pair (DPO's u - v = (2, -3)) it would be ½ (log(1 + e^-2) + log(1 + e^3)).
    out = AOT(AOT.Config(beta=1.0, form=Form.paired)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(1.2200948493, abs=1e-9)
    # The metrics stay per pair, in the pairs' order: β ρ_w = (1, -2).
    torch.testing.assert_close(out.metrics["rewards/chosen"], t(1.0, -2.0))


def test_unpaired_matches_hand_derivation():
    # sort(ρ_w) = (-2, 1), sort(ρ_l) = (-1, 1) -> δ = (-1, 0);
    # L = ½ (log(1 + e^1) + log 2) = ½ (1.3132616875 + 0.6931471806) = 1.0032044340.
    out = AOT(AOT.Config(beta=1.0, form=Form.unpaired)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(1.0032044340, abs=1e-9)


def test_is_the_logistic_loss_on_matched_quantiles(random_pairs):
    # The k-th smallest policy margin against the k-th smallest reference margin, found
    # by ranking, not by torch.sort.
    p = random_pairs()
    beta, eps = 0.2, 0.1
    u, v = p["chosen"] - p["rejected"], p["ref_chosen"] - p["ref_rejected"]
    rank_u, rank_v = u.argsort().argsort(), v.argsort().argsort()
    matched = torch.stack([u[rank_u == k][0] - v[rank_v == k][0] for k in range(len(u))])
    expected = -(1 - eps) * F.logsigmoid(beta * matched) - eps * F.logsigmoid(-beta * matched)
    got = aot_loss(p["chosen"], p["rejected"], p["ref_chosen"], p["ref_rejected"], beta=beta,
                   form=Form.paired, label_smoothing=eps)
    torch.testing.assert_close(got, expected)


def test_loss_ignores_which_pair_came_with_which_in_unpaired_form(random_pairs):
    # Unpaired compares the two distributions: re-pairing the rejected completions (with
    # their references) does not change the loss; the paired form does change.
    p = random_pairs(seed=1)
    shuffle = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    repaired = dict(p, rejected=p["rejected"][shuffle], ref_rejected=p["ref_rejected"][shuffle])
    for form, same in ((Form.unpaired, True), (Form.paired, False)):
        a = aot_loss(*p.values(), beta=0.5, form=form).mean()
        b = aot_loss(*repaired.values(), beta=0.5, form=form).mean()
        assert torch.isclose(a, b).item() is same


@pytest.mark.parametrize("form,loss_type", [("paired", "aot"), ("unpaired", "aot_unpaired")])
def test_matches_trl(form, loss_type, random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=8)
    ours = AOT(AOT.Config(beta=0.3, form=Form(form), label_smoothing=0.1)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss(loss_type, *p.values(), beta=0.3, label_smoothing=0.1)
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-12)


def test_conforms():
    check_objective(AOT, "aot", configs=[AOT.Config(), AOT.Config(form=Form.unpaired,
                                                                  label_smoothing=0.2)])
