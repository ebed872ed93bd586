"""SteerLM's NLL and the attribute model's masked MSE against hand-derived values, and
what the training module hands them: response-only log-probs, scaled targets and masks."""

import math

import pytest
import torch

from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.data.collate import collate_groups
from prefopt.data.records import parse_attributed
from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.objective import AttributeScores, ResponseLogps
from prefopt.plugins.steerlm import AttributeModel, SteerLM
from prefopt.training.module import PreferenceModule
from prefopt.training.optim import OptimizerConfig, SchedulerConfig

SCHEMA = AttributeSchema([AttributeSpec("quality", 0, 4), AttributeSpec("order", 0, 1)])


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_steerlm_loss_averages_over_tokens_or_responses():
    # Responses of 2 and 3 tokens with log-likelihoods -2 and -6:
    #   token average:    (2 + 6) / (2 + 3)   = 1.6
    #   sequence average: (2/2 + 6/3) / 2     = 1.5
    inputs = ResponseLogps(t(-2.0, -6.0).requires_grad_(), t(2, 3))
    out = SteerLM(SteerLM.Config(name="steerlm")).loss(inputs)
    assert out.loss.item() == pytest.approx(1.6)
    out.loss.backward()
    torch.testing.assert_close(inputs.logps.grad, t(-0.2, -0.2))  # -1 / Σ tokens each
    torch.testing.assert_close(out.metrics["steerlm/nll_per_token"], t(1.0, 2.0))
    sequence = SteerLM(SteerLM.Config(name="steerlm", average="sequence"))
    assert sequence.loss(ResponseLogps(t(-2.0, -6.0), t(2, 3))).loss.item() == pytest.approx(1.5)


def test_attribute_model_loss_is_masked_mse_by_hand():
    # Two responses, attributes (quality: scale 4, order: scale 1); row 0 lacks `order`.
    #   squared errors: (0.5 - 1)² = 0.25, [masked], (0.1 - 0)² = 0.01, (0.9 - 1)² = 0.01
    #   loss = (0.25 + 0.01 + 0.01) / 3 = 0.09
    predictions = t(0.5, 123.0, 0.1, 0.9).reshape(2, 2).requires_grad_()
    targets = t(1.0, 0.0, 0.0, 1.0).reshape(2, 2)
    present = torch.tensor([[True, False], [True, True]])
    inputs = AttributeScores(predictions, targets, present, ("quality", "order"), t(4.0, 1.0))
    out = AttributeModel(AttributeModel.Config(name="attribute_model")).loss(inputs)
    assert out.loss.item() == pytest.approx(0.09)
    out.loss.backward()
    # d/dp of Σ m (p - v)² / 3 = 2 m (p - v) / 3; the missing entry gets none.
    torch.testing.assert_close(predictions.grad,
                               t(2 * -0.5 / 3, 0.0, 2 * 0.1 / 3, 2 * -0.1 / 3).reshape(2, 2))
    # Metrics in the attributes' units: quality errors (0.5 - 1)·4 = -2 and 0.1·4 = 0.4.
    torch.testing.assert_close(out.metrics["attributes/quality/mae"], t(2.0, 0.4))
    torch.testing.assert_close(out.metrics["attributes/quality/accuracy"], t(0.0, 1.0))
    torch.testing.assert_close(out.metrics["attributes/order/mae"], t(0.1))


def test_attribute_model_loss_is_zero_without_any_value():
    predictions = torch.ones(2, 2, requires_grad=True)
    inputs = AttributeScores(predictions, torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool),
                             ("quality", "order"), torch.ones(2))
    out = AttributeModel(AttributeModel.Config(name="attribute_model")).loss(inputs)
    out.loss.backward()
    assert out.loss.item() == 0.0 and predictions.grad.abs().sum() == 0


def _batch(tokenizer, condition=True):
    records = [parse_attributed("r0", {"prompt": "pick 827", "response": "87",
                                       "attributes": {"quality": 4, "order": 1}}),
               parse_attributed("r1", {"prompt": "pick 40", "response": "4",
                                       "attributes": {"quality": 3, "order": None}})]
    groups, _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA, condition).encode_all(records)
    return collate_groups(groups, tokenizer.pad_token_id), groups


def test_module_sums_log_probs_over_response_tokens_only(tiny_model, tokenizer):
    batch, groups = _batch(tokenizer)
    module = PreferenceModule(tiny_model, None, SteerLM(SteerLM.Config(name="steerlm")),
                              OptimizerConfig(), SchedulerConfig(), logprob_impl="torch")
    inputs, _ = module.loss_inputs(batch)
    assert isinstance(inputs, ResponseLogps)
    # By hand from the full logits: the response tokens (and EOS) after the attribute line.
    for row, group in enumerate(groups):
        sequence = torch.tensor([group.prompt + group.completions[0]])
        with torch.no_grad():
            logits = tiny_model(input_ids=sequence).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        start = len(group.prompt)
        expected = sum(logp[p - 1, sequence[0, p]].item()
                       for p in range(start, sequence.shape[1]))
        assert inputs.logps[row].item() == pytest.approx(expected, rel=1e-5)
        assert inputs.tokens[row].item() == len(group.completions[0])


def test_module_scales_targets_and_masks_missing_values(tokenizer):
    from prefopt.models import ModelConfig, build_policy

    torch.manual_seed(0)
    model = build_policy(ModelConfig(), tokenizer, reward_head=True, num_labels=2)
    batch, _ = _batch(tokenizer, condition=False)
    module = PreferenceModule(model, None, AttributeModel(AttributeModel.Config(
        name="attribute_model")), OptimizerConfig(), SchedulerConfig(), schema=SCHEMA)
    inputs, _ = module.loss_inputs(batch)
    assert inputs.predictions.shape == (2, 2) and inputs.names == ("quality", "order")
    # quality 4 and 3 on [0, 4] -> 1.0 and 0.75; order 1 on [0, 1] -> 1.0, then missing.
    torch.testing.assert_close(inputs.targets[:, 0], torch.tensor([1.0, 0.75]))
    assert inputs.targets[0, 1].item() == 1.0
    assert inputs.present.tolist() == [[True, True], [True, False]]
    assert not math.isnan(inputs.targets.sum().item())
