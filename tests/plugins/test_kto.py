"""KTO against hand-derived values; z₀ handling; class-balance warning."""

import math
import warnings

import pytest
import torch

from prefopt.data.tokenize import EncodedGroup
from prefopt.objective import UnpairedLogps
from prefopt.plugins.kto import KTO, kto_loss


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


LABELS = torch.tensor([True, False])
# record 0: desirable,   log π = -1.0, log π_ref = -2.0 -> r = +1.0
# record 1: undesirable, log π = -3.0, log π_ref = -2.5 -> r = -0.5
LOGPS, REF = t(-1.0, -3.0), t(-2.0, -2.5)


def test_kto_matches_hand_derivation():
    # β = 1, z₀ = 0.25:
    #   desirable:   1 - σ(1.0 - 0.25)    = 1 - σ(0.75) = 0.3208213008
    #   undesirable: 1 - σ(0.25 - (-0.5)) = 1 - σ(0.75) = 0.3208213008
    losses, rewards, z0 = kto_loss(LOGPS, REF, LABELS, t(0.25), beta=1.0)
    torch.testing.assert_close(losses, t(0.3208213008, 0.3208213008), rtol=0, atol=1e-9)
    torch.testing.assert_close(rewards, t(1.0, -0.5))
    assert z0.item() == 0.25


def test_negative_kl_estimate_is_clamped_to_zero_and_weights_apply():
    # z₀ = max(-0.4, 0) = 0; β = 1, λ_D = 2, λ_U = 0.5:
    #   desirable:   2.0 (1 - σ(1.0))  = 2 · 0.2689414214 = 0.5378828427
    #   undesirable: 0.5 (1 - σ(0.5))  = 0.5 · 0.3775406688 = 0.1887703344
    losses, _, z0 = kto_loss(LOGPS, REF, LABELS, t(-0.4), beta=1.0, desirable_weight=2.0,
                             undesirable_weight=0.5)
    assert z0.item() == 0.0
    torch.testing.assert_close(losses, t(2 * (1 - sigmoid(1.0)), 0.5 * (1 - sigmoid(0.5))))


def test_all_desirable_batch_at_reference():
    # π = π_ref and z₀ = 0: every loss is λ_D (1 - σ(0)) = λ_D / 2, and the gradient of the
    # mean with respect to each log π is -λ_D β σ'(0) / B = -λ_D β / (4 B).
    logps = t(-4.0, -2.0, -7.0).requires_grad_()
    kl = t(0.0).requires_grad_()
    objective = KTO(KTO.Config(beta=0.2, desirable_weight=1.5))
    out = objective.loss(UnpairedLogps(logps, t(3, 3, 3), torch.ones(3, dtype=torch.bool),
                                       logps.detach().clone(), kl))
    assert out.loss.item() == pytest.approx(0.75)
    out.loss.backward()
    torch.testing.assert_close(logps.grad, torch.full_like(logps, -1.5 * 0.2 / 12))
    assert kl.grad is None  # z₀ is detached: no gradient through the reference point
    assert "rewards/rejected" in out.metrics and out.metrics["rewards/rejected"].numel() == 0
    assert out.metrics["rewards/accuracies"].tolist() == [0.5, 0.5, 0.5]  # at the reference point


def test_needs_mismatched_pairs_and_reference():
    needs = KTO(KTO.Config()).needs()
    assert needs.mismatched_pairs and needs.reference


def groups(n_desirable, n_undesirable):
    return [EncodedGroup([1], ([2],), label=True)] * n_desirable + \
        [EncodedGroup([1], ([2],), label=False)] * n_undesirable


def test_class_balance_warning():
    objective = KTO(KTO.Config())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        objective.check_data(groups(10, 10))  # 1.0: inside [1, 4/3]
        objective.check_data(groups(13, 10))  # 1.3: inside
    with pytest.warns(UserWarning, match=r"= 0\.5, outside the range \[1, 4/3\].*"
                                         r"desirable_weight=2 gives 1"):
        objective.check_data(groups(10, 20))
    with pytest.warns(UserWarning, match="outside the range"):
        KTO(KTO.Config(desirable_weight=2.0)).check_data(groups(10, 10))  # 2.0


def test_batch_of_one_cannot_form_mismatched_pairs(tokenizer):
    from prefopt.data.collate import collate_groups
    from prefopt.data.datamodule import DataConfig, PreferenceDataModule

    with pytest.raises(ValueError, match="batch of 1 cannot form mismatched"):
        collate_groups(groups(1, 0), pad_id=0, mismatched=True)
    with pytest.raises(ValueError, match=r"data.batch_size >= 2 \(got 1\)"):
        PreferenceDataModule(DataConfig(batch_size=1), tokenizer, fmt="unpaired",
                             mismatched=True)


def test_mismatched_rows_pair_each_prompt_with_the_next_completion():
    from prefopt.data.collate import MISMATCHED_SLOT, collate_groups

    batch_groups = [EncodedGroup([1, 10], ([20],), label=True),
                    EncodedGroup([1, 11], ([21, 22],), label=False),
                    EncodedGroup([1, 12], ([23],), label=True)]
    batch = collate_groups(batch_groups, pad_id=0, mismatched=True)
    mismatched = batch["input_ids"][batch["slot"] == MISMATCHED_SLOT].tolist()
    assert mismatched == [[1, 10, 21, 22], [1, 11, 23, 0], [1, 12, 20, 0]]
    assert batch["labels"].tolist() == [True, False, True]
