"""Value functions: a zero-initialised head, its positions and mask, and the two kinds."""

import pytest
import torch

from prefopt.objective import ValueModel
from prefopt.online.value import SeparateValueModel, ValueHead, build_value_model, token_values


def test_the_head_starts_at_zero_and_is_linear():
    head = ValueHead(3)
    hidden = torch.randn(2, 4, 3)
    assert torch.equal(head(hidden), torch.zeros(2, 4))
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        head.linear.bias.fill_(0.25)
    h = torch.tensor([[[2.0, 1.0, 4.0]]])
    assert head(h).item() == pytest.approx(2.0 - 2.0 + 2.0 + 0.25)


def test_values_sit_where_the_token_logprobs_sit_and_are_zero_off_the_completion():
    """Position t predicts token t + 1: values are [R, T-1], masked by the completion
    mask shifted by one."""
    head = ValueHead(1)
    with torch.no_grad():
        head.linear.weight.fill_(1.0)
    hidden = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])  # V(s_t) = t + 1
    batch = {"completion_mask": torch.tensor([[0, 0, 1, 1]])}
    values = token_values(head, batch, hidden)
    assert values.tolist() == [[0.0, 2.0, 3.0]]


def test_build_each_kind(tiny_model):
    assert build_value_model(None, tiny_model) is None
    shared = build_value_model(ValueModel.shared, tiny_model)
    assert isinstance(shared, ValueHead)
    assert shared.linear.in_features == tiny_model.config.hidden_size
    separate = build_value_model("separate", tiny_model)
    assert isinstance(separate, SeparateValueModel)
    # A copy of the trunk: training it leaves the policy's trunk alone.
    trunk = dict(separate.trunk.named_parameters())
    policy = dict(tiny_model.base_model.named_parameters())
    assert trunk.keys() == policy.keys()
    name = next(iter(trunk))
    assert trunk[name].data_ptr() != policy[name].data_ptr()
    assert torch.equal(trunk[name], policy[name])
