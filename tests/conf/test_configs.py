"""Every config composes, every objective trains two steps, and typos are errors."""

import csv

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from prefopt import registry
from prefopt.objective import OnlineObjective
from prefopt.training.train import train

REWARDS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
           "rewards/accuracies"}
# Policies also report their log-probs; reward models (a scalar head) have none.
SCHEMA = REWARDS | {"logps/chosen", "logps/rejected", "kl", "entropy"}
# Attributed records (SteerLM) have responses, not preferences: no rewards/*.
ATTRIBUTED = {"attribute_model": {"loss", "attributes/quality/mae", "attributes/order/mae",
                                  "attributes/length/mae"},
              "steerlm": {"loss", "logps/response", "entropy", "steerlm/nll_per_token"}}
# Online objectives sample and score their own completions; validation answers greedily.
ONLINE_TRAIN = {"loss", "reward/mean", "reward/std", "kl", "entropy", "response/length"}
ONLINE_VAL = {"reward/mean", "response/length", "response/ended"}


@pytest.mark.parametrize("name", sorted(registry.discover()))
def test_every_objective_trains_two_steps(compose, fast_overrides, name, tmp_path):
    cfg = compose(f"objective={name}", *fast_overrides, "export_policy=false")
    assert cfg.objective.name == name
    result = train(cfg)
    cls = registry.load(name)
    with open(tmp_path / "run" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    if issubclass(cls, OnlineObjective):
        assert result["end"]["val/reward/mean"] == result["end"]["val/reward/mean"]  # not NaN
        assert {f"val/{m}" for m in ONLINE_VAL} <= columns
        assert {f"train/{m}" for m in ONLINE_TRAIN} <= columns
        return
    assert result["end"]["val/loss"] == result["end"]["val/loss"]  # finite, not NaN
    needs = cls(cls.Config(name=name)).needs()
    # Without a reference (sft) there is no KL to it.
    expected = ATTRIBUTED.get(name) or (
        REWARDS if needs.reward_model else SCHEMA if needs.reference else SCHEMA - {"kl"})
    assert {f"val/{m}" for m in expected} <= columns
    assert {f"train/{m}" for m in expected} <= columns


@pytest.mark.parametrize("group,options", [("model", ["tiny", "hf"]),
                                           ("data", ["synthetic", "files"]),
                                           ("scheduler", ["cosine", "constant"]),
                                           ("logger", ["csv", "tensorboard", "wandb"])])
def test_every_group_option_composes(compose, group, options):
    for option in options:
        cfg = compose(f"{group}={option}")
        assert group in cfg


def test_typo_in_objective_key_names_it(compose):
    with pytest.raises(ConfigCompositionException) as err:
        compose("objective.betaa=1")
    assert "betaa" in str(err.value.__cause__ or err.value)


@pytest.mark.parametrize("override,key", [("trainer.max_stepss=3", "max_stepss"),
                                          ("data.max_lenght=3", "max_lenght"),
                                          ("model.tiny.hiden_size=3", "hiden_size"),
                                          ("sed=3", "sed")])
def test_typo_anywhere_is_an_error(compose, override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose(override)
    assert key in str(err.value.__cause__ or err.value)


def test_wrong_type_is_an_error(compose):
    with pytest.raises(ConfigCompositionException) as err:
        compose("objective.beta=high")
    assert "beta" in str(err.value.__cause__ or err.value)


def test_unknown_objective_lists_available(compose):
    with pytest.raises(MissingConfigException) as err:
        compose("objective=nosuch")
    message = str(err.value)
    assert "nosuch" in message and "dpo" in message and "ipo" in message


def test_ipo_override(compose):
    cfg = compose("objective=ipo", "objective.beta=0.5")
    assert cfg.objective.name == "ipo" and cfg.objective.beta == 0.5
