"""The contract: the table of batch formats, what it builds from a batch, Needs."""

import re

import pytest
import torch

from prefopt.objective import (
    FED_FORMATS,
    FORMATS,
    AttributeScale,
    AttributeScores,
    BatchFormat,
    Needs,
    PairwiseLogps,
    PairwiseScores,
    RankedLogps,
    ResponseLogps,
    Rows,
    UnpairedLogps,
    ValueModel,
    unfeedable,
)
from prefopt.plugins.kto import KTO


def test_every_format_has_one_row_and_prompts_go_online():
    assert set(FORMATS) == set(BatchFormat)
    assert FED_FORMATS == (BatchFormat.PAIRWISE, BatchFormat.UNPAIRED, BatchFormat.RANKED,
                           BatchFormat.ATTRIBUTED)
    assert FORMATS[BatchFormat.PROMPTS].logps is None
    assert [f for f, spec in FORMATS.items() if spec.attributed] == [BatchFormat.ATTRIBUTED]


def _rows(slot, group, ranks, **batch):
    return Rows(torch.tensor(slot), torch.tensor(group), torch.tensor(ranks), batch)


def test_pairwise_rows_split_by_slot():
    # Two pairs stacked as [c0, r0, c1, r1]: slots 0, 1, 0, 1.
    rows = _rows([0, 1, 0, 1], [0, 0, 1, 1], [0, 1, 0, 1], margins=torch.tensor([0.5, 0.0]))
    logps, tokens, ref = (torch.tensor([-1.0, -2.0, -3.0, -4.0]), torch.tensor([1, 2, 3, 4]),
                          torch.tensor([-1.5, -2.5, -3.5, -4.5]))
    inputs = FORMATS[BatchFormat.PAIRWISE].logps(rows, logps, tokens, ref, None)
    assert isinstance(inputs, PairwiseLogps)
    assert inputs.chosen.tolist() == [-1.0, -3.0] and inputs.rejected.tolist() == [-2.0, -4.0]
    assert inputs.chosen_tokens.tolist() == [1, 3] and inputs.rejected_tokens.tolist() == [2, 4]
    assert inputs.ref_chosen.tolist() == [-1.5, -3.5]
    assert inputs.ref_rejected.tolist() == [-2.5, -4.5]
    without = FORMATS[BatchFormat.PAIRWISE].logps(rows, logps, tokens, None, None)
    assert without.ref_chosen is None and without.ref_rejected is None
    scores = FORMATS[BatchFormat.PAIRWISE].scores(rows, torch.tensor([[1.0], [2.0], [3.0],
                                                                      [4.0]]), None)
    assert isinstance(scores, PairwiseScores)
    assert scores.chosen.tolist() == [1.0, 3.0] and scores.rejected.tolist() == [2.0, 4.0]
    assert scores.margins.tolist() == [0.5, 0.0]
    best, worst = FORMATS[BatchFormat.PAIRWISE].best_and_worst(rows)
    assert best.tolist() == [True, False, True, False] and worst.tolist() == [False, True,
                                                                             False, True]


def test_unpaired_rows_carry_labels_and_kl_ratio():
    labels = torch.tensor([True, False, True])
    rows = _rows([0, 0, 0], [0, 1, 2], [0, 0, 0], labels=labels)
    kl_ratio = torch.tensor(0.25)
    inputs = FORMATS[BatchFormat.UNPAIRED].logps(rows, torch.tensor([-1.0, -2.0, -3.0]),
                                                 torch.tensor([1, 1, 1]), None, kl_ratio)
    assert isinstance(inputs, UnpairedLogps)
    assert inputs.labels is labels and inputs.kl_ratio is kl_ratio
    best, worst = FORMATS[BatchFormat.UNPAIRED].best_and_worst(rows)
    assert best.tolist() == [True, False, True] and worst.tolist() == [False, True, False]
    assert FORMATS[BatchFormat.UNPAIRED].scores is None  # no reward model on unpaired records


def test_ranked_best_and_worst_per_prompt_with_ties():
    # Prompt 0: ranks 2, 0, 1 -> best row 1, worst row 0. Prompt 1: ranks 0, 0 -> a tie,
    # both rows are its best and its worst.
    rows = _rows([0, 1, 2, 0, 1], [0, 0, 0, 1, 1], [2, 0, 1, 0, 0])
    best, worst = FORMATS[BatchFormat.RANKED].best_and_worst(rows)
    assert best.tolist() == [False, True, False, True, True]
    assert worst.tolist() == [True, False, False, True, True]
    inputs = FORMATS[BatchFormat.RANKED].logps(rows, torch.zeros(5), torch.ones(5), None, None)
    assert isinstance(inputs, RankedLogps) and inputs.group.tolist() == [0, 0, 0, 1, 1]


def test_attribute_scores_on_the_unit_scale_with_absent_values():
    # quality in [0, 4], length in [1, 6]; the second response gives no length.
    values = torch.tensor([[2.0, 6.0], [4.0, float("nan")]])
    rows = _rows([0, 0], [0, 1], [0, 0], attributes=values)
    scale = AttributeScale(("quality", "length"), torch.tensor([0.0, 1.0]),
                           torch.tensor([4.0, 5.0]))
    outputs = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    inputs = FORMATS[BatchFormat.ATTRIBUTED].scores(rows, outputs, scale)
    assert isinstance(inputs, AttributeScores)
    # (value - min) / scale; an absent value reads as 0 first (masked out by `present`).
    torch.testing.assert_close(inputs.targets, torch.tensor([[0.5, 1.0], [1.0, (0.0 - 1.0) / 5.0]]))
    assert inputs.present.tolist() == [[True, True], [True, False]]
    assert inputs.names == ("quality", "length")
    with pytest.raises(ValueError, match="the model has 2 outputs, but the attribute schema "
                                         "has 1 attributes"):
        FORMATS[BatchFormat.ATTRIBUTED].scores(rows, outputs, AttributeScale(
            ("quality",), torch.tensor([0.0]), torch.tensor([4.0])))
    assert FORMATS[BatchFormat.ATTRIBUTED].best_and_worst is None  # logps/response
    response = FORMATS[BatchFormat.ATTRIBUTED].logps(rows, torch.zeros(2), torch.ones(2),
                                                     None, None)
    assert isinstance(response, ResponseLogps)


def test_value_model_is_an_enum_of_the_contract():
    assert Needs(value_model="separate").value_model is ValueModel.separate
    assert Needs().value_model is None
    with pytest.raises(ValueError):
        Needs(value_model="elsewhere")


@pytest.mark.parametrize("needs,message", [
    (dict(reward_model=True, reference=False), "reward model on unpaired records"),
    (dict(mismatched_pairs=True, reference=False), "mismatched_pairs .* without a reference"),
])
def test_build_refuses_needs_the_module_cannot_serve(needs, message):
    class Odd(KTO):
        def needs(self):
            return Needs(**needs)

    objective = Odd(KTO.Config(name="odd"))
    assert objective.batch_format == BatchFormat.UNPAIRED
    assert re.search(message, unfeedable(objective))
    assert unfeedable(KTO(KTO.Config(name="kto"))) is None  # KTO itself is fine


def test_a_config_refuses_a_setting_it_does_not_declare():
    from prefopt.objective import UnknownSettingError
    from prefopt.plugins.dpo import DPO

    config = DPO.Config(name="dpo")
    config.beta = 0.5  # a declared field
    with pytest.raises(UnknownSettingError, match=r"^objective\.betta: objective 'dpo' has no "
                                                  r"setting 'betta' \(its settings: beta, "
                                                  r"label_smoothing, .*\)\. Did you mean "
                                                  r"objective\.beta\?"):
        config.betta = 0.5


def test_a_forced_unknown_key_does_not_compose_into_an_objective():
    """`+objective.typo=1` passes Hydra's schema (a + forces the key in); the conversion to
    the objective's Config refuses it instead of dropping it where the objective never
    looks."""
    from prefopt.objective import UnknownSettingError
    from prefopt.testing import compose_objective

    with pytest.raises(UnknownSettingError, match=r"objective 'dpo' has no setting 'typo'"):
        compose_objective("objective=dpo", "+objective.typo=1")
    assert compose_objective("objective=dpo", "objective.beta=0.5").beta == 0.5


@pytest.mark.parametrize("value,ok", [(0.0, True), (2.5, True), (-1e-9, False),
                                      (float("nan"), False)])
def test_require_non_negative_refuses_negatives_and_nan_naming_the_setting(value, ok):
    from dataclasses import dataclass

    from prefopt.objective import ObjectiveConfig, require_non_negative

    @dataclass
    class Config(ObjectiveConfig):
        kl_coef: float = 0.0

    config = Config(kl_coef=value)
    if ok:
        require_non_negative(config, "kl_coef")
    else:
        with pytest.raises(ValueError, match=r"^objective\.kl_coef must be >= 0, got"):
            require_non_negative(config, "kl_coef")
