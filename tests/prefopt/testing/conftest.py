"""Shared by the tests of the conformance kit (prefopt.testing): correct toy objectives,
one per format, which the tests subclass to break one thing, and `run`, which puts one
through the tensor checks under its kit name.

Under --import-mode=importlib a test module cannot import this file; fixtures hand the
toys out: `toys` (toys.Margin, ...), `toy` for a parametrisation by class name
(parametrize("toy", ["Margin", "Listwise"], indirect=True)), and `run`.
"""

import types
from dataclasses import dataclass

import pytest
import torch

from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    preference_metrics,
)
from prefopt.plugins.kwise import plackett_luce_nll, ranking_metrics
from prefopt.plugins.steerlm import masked_mse, response_nll
from prefopt.testing import check_loss

# -- correct toy objectives, one per format; the broken ones in the tests change one thing

class Margin(Objective):
    """A correct reference-free pairwise objective."""

    batch_format = BatchFormat.PAIRWISE
    kit_name = "margin"  # the name the tests run it under

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 1.0

    def needs(self):
        return Needs(reference=False)

    def rewards(self, inputs):
        return inputs.chosen, inputs.rejected

    def loss(self, inputs):
        chosen, rejected = self.rewards(inputs)
        losses = torch.nn.functional.softplus(-(chosen - rejected))
        return LossOutput(losses.mean(), preference_metrics(chosen, rejected))


class Desirability(Margin):
    """A correct reference-free unpaired objective: desirable log-probs up, others down."""

    batch_format = BatchFormat.UNPAIRED
    kit_name = "desirability"

    def loss(self, inputs):
        sign = inputs.labels.float() * 2 - 1
        rewards = inputs.logps / inputs.tokens.clamp(min=1)
        losses = torch.nn.functional.softplus(-sign * rewards)
        r = rewards.detach()
        return LossOutput(losses.mean(), {
            "rewards/chosen": r[inputs.labels], "rewards/rejected": r[~inputs.labels],
            "rewards/accuracies": (sign * r > 0).float()})


class Listwise(Margin):
    """A correct reference-free ranked objective: Plackett-Luce on the log-probs."""

    batch_format = BatchFormat.RANKED
    kit_name = "listwise"

    def ranks(self, inputs):
        return inputs.ranks

    def loss(self, inputs):
        ranks = self.ranks(inputs)
        losses = plackett_luce_nll(inputs.logps, ranks, inputs.group)
        return LossOutput(losses.mean(), ranking_metrics(inputs.logps, ranks, inputs.group))


class Conditioned(Margin):
    """A correct reference-free objective on attributed records: SteerLM's NLL, with a
    metric of its own and no shared one (attributed records hold no preferences)."""

    batch_format = BatchFormat.ATTRIBUTED
    kit_name = "conditioned"
    monitor = ("loss", "min")

    def loss(self, inputs):
        per_token = inputs.logps / inputs.tokens.clamp(min=1)
        return LossOutput(response_nll(inputs.logps, inputs.tokens, "token"),
                          {"conditioned/nll_per_token": -per_token.detach()})


class Regression(Margin):
    """A correct attribute model: masked MSE, the shared per-attribute metrics over the
    responses giving each attribute, and one per-response metric of its own."""

    batch_format = BatchFormat.ATTRIBUTED
    kit_name = "regression"
    monitor = ("attributes/quality/mae", "min")

    def needs(self):
        return Needs(reference=False, reward_model=True)

    def loss(self, inputs):
        error = (inputs.predictions.detach() - inputs.targets) * inputs.scale
        metrics = {"regression/abs_error": (error.abs() * inputs.present).sum(1)}
        for a, attribute in enumerate(inputs.names):
            metrics[f"attributes/{attribute}/mae"] = error[inputs.present[:, a], a].abs()
        return LossOutput(masked_mse(inputs.predictions, inputs.targets, inputs.present),
                          metrics)


def run(cls):
    return check_loss(cls(cls.Config(name=cls.kit_name)), cls.kit_name)


TOYS = {cls.__name__: cls for cls in (Margin, Desirability, Listwise, Conditioned, Regression)}


@pytest.fixture
def toys():
    """The toy objectives by class name: toys.Margin, toys.Regression, ..."""
    return types.SimpleNamespace(**TOYS)


@pytest.fixture
def toy(request):
    """The toy objective an indirect parametrisation names by its class name."""
    return TOYS[request.param]


@pytest.fixture(name="run")
def run_fixture():
    """run(cls): the tensor checks of a toy objective (or a subclass), under its kit name."""
    return run
