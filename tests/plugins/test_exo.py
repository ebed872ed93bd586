"""EXO (pairwise) against a hand derivation, the paper's KL, and TRL's `exo_pair`."""

import math

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.exo import EXO, exo_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_matches_hand_derivation():
    # β = 0.5, h = ρ_w - ρ_l = 1 -> q = (σ(0.5), σ(-0.5)) = (0.6224593312, 0.3775406688);
    # p = (0.9, 0.1) at ε = 0.1.
    # KL(q‖p) = 0.6224593312 · (log 0.6224593312 - log 0.9)
    #         + 0.3775406688 · (log 0.3775406688 - log 0.1)
    #         = 0.6224593312 · -0.3687164685 + 0.3775406688 · 1.3285081088 = 0.2720548335
    inputs = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                           rejected_tokens=t(2), ref_chosen=t(-2.5), ref_rejected=t(-2.5))
    out = EXO(EXO.Config(beta=0.5, label_smoothing=0.1)).loss(inputs)
    assert out.loss.item() == pytest.approx(0.2720548335, abs=1e-9)


def test_is_the_kl_between_two_point_distributions(random_pairs):
    # q = softmax over the pair of β log π/π_ref; p = (1 - ε, ε); KL(q‖p) = Σ q log q/p.
    p = random_pairs()
    beta, eps = 0.1, 1e-3
    scores = torch.stack([beta * (p["chosen"] - p["ref_chosen"]),
                          beta * (p["rejected"] - p["ref_rejected"])], dim=-1)
    q = torch.softmax(scores, dim=-1)
    target = torch.tensor([1 - eps, eps], dtype=torch.float64)
    expected = (q * (q.log() - target.log())).sum(-1)
    got = exo_loss(p["chosen"] - p["ref_chosen"], p["rejected"] - p["ref_rejected"], beta=beta,
                   label_smoothing=eps)
    torch.testing.assert_close(got, expected)


def test_is_zero_where_the_policy_matches_the_label():
    # σ(βh) = 1 - ε  <=>  βh = log((1 - ε)/ε).
    eps = 0.2
    h = math.log((1 - eps) / eps)
    assert exo_loss(t(h), t(0.0), beta=1.0, label_smoothing=eps).item() == \
        pytest.approx(0.0, abs=1e-12)


def test_matches_trl_exo_pair(random_pairs, dpo_trainer_loss):
    p = random_pairs(seed=6)
    ours = EXO(EXO.Config(beta=0.3, label_smoothing=0.01)).loss(
        PairwiseLogps(chosen_tokens=torch.ones(16), rejected_tokens=torch.ones(16), **p))
    trl = dpo_trainer_loss("exo_pair", *p.values(), beta=0.3, label_smoothing=0.01)
    # TRL takes log ε and log(1 - ε) of a float32 tensor: agreement to float32's precision.
    assert ours.loss.item() == pytest.approx(trl.item(), rel=1e-6)


@pytest.mark.parametrize("value", [0.0, 0.5])
def test_smoothing_outside_the_open_interval_is_refused(value):
    with pytest.raises(ValueError, match="objective.label_smoothing"):
        EXO(EXO.Config(label_smoothing=value))


def test_conforms():
    check_objective(EXO, "exo")
