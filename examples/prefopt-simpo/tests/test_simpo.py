"""SimPO against hand-derived values, and prefopt's conformance kit.

Run with the package installed (`pip install -e .`): the kit checks the entry point too.
"""

import math

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.testing import check_objective, compose_objective
from prefopt_simpo import SimPO


def simpo(**config):
    return SimPO(SimPO.Config(name="simpo", **config))


def pairs(chosen, rejected, chosen_tokens, rejected_tokens):
    return PairwiseLogps(torch.tensor(chosen), torch.tensor(rejected),
                         torch.tensor(chosen_tokens), torch.tensor(rejected_tokens))


def test_loss_and_metrics_by_hand():
    # β = 2, γ = 1. Rewards are β · (sum of log-probs) / (number of tokens):
    #   pair 1: chosen 2·(-4/2) = -4, rejected 2·(-9/3) = -6, margin  2, 2 - γ =  1
    #   pair 2: chosen 2·(-10/4) = -5, rejected 2·(-4/2) = -4, margin -1, -1 - γ = -2
    # loss = -log σ(h) = log(1 + e^-h): log(1 + e^-1) = 0.3132617, log(1 + e^2) = 2.1269280,
    # mean 1.2200948.
    out = simpo(beta=2.0, gamma=1.0).loss(pairs([-4.0, -10.0], [-9.0, -4.0], [2, 4], [3, 2]))
    assert out.loss.item() == pytest.approx(1.2200948, abs=1e-6)
    assert out.metrics["rewards/chosen"].tolist() == pytest.approx([-4.0, -5.0])
    assert out.metrics["rewards/rejected"].tolist() == pytest.approx([-6.0, -4.0])
    assert out.metrics["rewards/margins"].tolist() == pytest.approx([2.0, -1.0])
    assert out.metrics["rewards/accuracies"].tolist() == [1.0, 0.0]
    assert out.metrics["simpo/above_target"].tolist() == [1.0, 0.0]


def test_rewards_are_per_token_not_summed():
    # The chosen completion has the lower sum (-6 < -4) but the higher mean per token
    # (-6/6 = -1 > -4/2 = -2): SimPO prefers it, margin β·(-1 - (-2)) = 2.
    # With γ = 0: loss = log(1 + e^-2) = 0.1269280.
    out = simpo(beta=2.0, gamma=0.0).loss(pairs([-6.0], [-4.0], [6], [2]))
    assert out.metrics["rewards/margins"].item() == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(0.1269280, abs=1e-6)


def test_target_margin_shifts_the_logit():
    # Equal rewards: h = -γ, so the loss is log(1 + e^γ); at γ = 0 it is log 2.
    batch = pairs([-3.0], [-3.0], [3], [3])
    assert simpo(gamma=0.0).loss(batch).loss.item() == pytest.approx(math.log(2.0))
    assert simpo(gamma=1.5).loss(batch).loss.item() == pytest.approx(math.log1p(math.exp(1.5)))


def test_empty_completion_counts_as_one_token():
    # 0 tokens, sum 0: reward β·0/1 = 0, not 0/0. Chosen reward 2·(-2/2) = -2, margin -2.
    out = simpo(beta=2.0, gamma=0.0).loss(pairs([-2.0], [0.0], [2], [0]))
    assert torch.isfinite(out.loss)
    assert out.metrics["rewards/margins"].item() == pytest.approx(-2.0)


@pytest.mark.parametrize("config,message", [({"beta": 0.0}, "beta must be > 0"),
                                            ({"gamma": -0.1}, "gamma .* must be >= 0")])
def test_config_is_validated(config, message):
    with pytest.raises(ValueError, match=message):
        simpo(**config)


def test_conforms_to_the_plugin_contract():
    ran = check_objective(SimPO, "simpo", configs=[SimPO.Config(), SimPO.Config(gamma=0.0)])
    assert ran.count("reference-free") == 2


def test_presets():
    preset = compose_objective("objective=simpo_llama3_instruct")
    assert isinstance(preset, SimPO.Config)
    assert (preset.name, preset.beta, preset.gamma) == ("simpo", 2.5, 1.375)
    assert compose_objective("objective=simpo_mistral_instruct").gamma == 0.25
