"""CPO against a hand derivation, the paper's formula, and TRL's CPOTrainer.cpo_loss."""

import pytest
import torch
import torch.nn.functional as F

from prefopt.objective import PairwiseLogps
from prefopt.plugins.cpo import CPO
from prefopt.plugins.dpo import dpo_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


INPUTS = PairwiseLogps(chosen=t(-2.0), rejected=t(-3.0), chosen_tokens=t(4),
                       rejected_tokens=t(2))


def test_matches_hand_derivation():
    # β = 0.5: L_prefer = -log σ(0.5 · (-2 - -3)) = log(1 + e^-0.5) = 0.4740769842.
    # L_NLL = 2 / 4 = 0.5 per token;  α = 1: L = 0.9740769842.
    out = CPO(CPO.Config(beta=0.5)).loss(INPUTS)
    assert out.loss.item() == pytest.approx(0.9740769842, abs=1e-9)
    assert out.metrics["cpo/nll"].item() == 0.5
    assert out.metrics["rewards/chosen"].item() == -1.0  # β log π(y_w)
    no_nll = CPO(CPO.Config(beta=0.5, nll_weight=0.0)).loss(INPUTS)
    assert no_nll.loss.item() == pytest.approx(0.4740769842, abs=1e-9)


def test_is_reference_free_dpo_plus_nll(random_pairs):
    # L_prefer is DPO with π_ref ≡ 1; the NLL weighs every token of the batch the same.
    p = random_pairs()
    tokens = torch.arange(1, 17, dtype=torch.float64)
    dpo, _, _ = dpo_loss(p["chosen"], p["rejected"], None, None, beta=0.1)
    expected = dpo.mean() + 0.5 * (-p["chosen"].sum() / tokens.sum())
    out = CPO(CPO.Config(beta=0.1, nll_weight=0.5)).loss(PairwiseLogps(
        chosen=p["chosen"], rejected=p["rejected"], chosen_tokens=tokens,
        rejected_tokens=tokens))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(dpo, -F.logsigmoid(0.1 * (p["chosen"] - p["rejected"])))


def test_matches_trl(random_pairs, trl_method):
    # TRL's sigmoid CPO loss on summed log-probs (no label smoothing, no AlphaPO), plus
    # cpo_alpha times the NLL, here the same per-token NLL.
    p = random_pairs(seed=10)
    tokens = torch.full((16,), 5.0, dtype=torch.float64)
    cpo_loss = trl_method("trl.experimental.cpo.cpo_trainer", "CPOTrainer", "cpo_loss",
                          alpha=0.0, loss_type="sigmoid", beta=0.2, label_smoothing=0.0)
    trl_losses, trl_chosen, _ = cpo_loss(p["chosen"], p["rejected"])
    nll = -p["chosen"].sum() / tokens.sum()
    ours = CPO(CPO.Config(beta=0.2, nll_weight=1.0)).loss(PairwiseLogps(
        chosen=p["chosen"], rejected=p["rejected"], chosen_tokens=tokens,
        rejected_tokens=tokens))
    assert ours.loss.item() == pytest.approx((trl_losses.mean() + nll).item(), rel=1e-12)
    torch.testing.assert_close(ours.metrics["rewards/chosen"], trl_chosen)


@pytest.mark.parametrize("field,value", [("beta", 0.0), ("nll_weight", -1.0)])
def test_invalid_config_is_refused(field, value):
    with pytest.raises(ValueError, match=f"objective.{field}"):
        CPO(CPO.Config(**{field: value}))


def test_conforms():
    check_objective(CPO, "cpo", configs=[CPO.Config(), CPO.Config(nll_weight=0.0)])
