"""From overrides to jobs: Hydra's sweep, settings matched to each objective, typos refused."""

import pytest

from prefopt.compare import cli, sweep
from prefopt.registry import PluginError
from prefopt.training.config import ConfigError


@pytest.fixture(scope="module")
def compose():
    from prefopt import api

    api.prepare()
    return api.compose


def _jobs(jobs):
    return [(j.objective, j.seed, j.setting) for j in jobs]


def test_a_setting_applies_where_the_objective_has_it(compose):
    jobs = sweep.plan(["objective=dpo,sft", "objective.beta=0.1,0.5", "seed=0,1"], compose)
    assert _jobs(jobs) == [
        ("dpo", 0, "beta=0.1"), ("dpo", 1, "beta=0.1"), ("dpo", 0, "beta=0.5"),
        ("dpo", 1, "beta=0.5"), ("sft", 0, "(no beta)"), ("sft", 1, "(no beta)")]
    sft = jobs[-1]
    assert sft.not_applicable == ["beta"]
    assert not any(o.startswith("objective.beta") for o in sft.overrides)
    assert "objective.beta=0.5" in jobs[2].overrides


def test_a_setting_of_one_objective_only(compose):
    jobs = sweep.plan(["objective=dpo,kto", "objective.label_smoothing=0.2"], compose)
    assert _jobs(jobs) == [("dpo", 0, "label_smoothing=0.2"),
                           ("kto", 0, "(no label_smoothing)")]


def test_swept_non_objective_keys_label_the_rows(compose):
    jobs = sweep.plan(["objective=ipo", "optimizer.lr=0.001,0.0001"], compose)
    assert _jobs(jobs) == [("ipo", 0, "optimizer.lr=0.001"), ("ipo", 0, "optimizer.lr=0.0001")]


def test_a_misspelt_setting_is_an_error_naming_it(compose):
    with pytest.raises(ConfigError) as error:
        sweep.plan(["objective=dpo,sft", "objective.betaa=0.1"], compose)
    message = str(error.value)
    assert message.startswith("objective.betaa: none of the objectives compared has a "
                              "setting 'betaa'")
    assert "Did you mean objective.beta?" in message and "\n" not in message


def test_a_default_setting_is_applied_where_it_fits_and_never_refused(compose):
    assert _jobs(sweep.plan(["objective=sft", "objective.beta=0.1"], compose,
                            lenient=["beta"])) == [("sft", 0, "(no beta)")]
    with pytest.raises(ConfigError, match="objective.beta: none of"):
        sweep.plan(["objective=sft", "objective.beta=0.1"], compose)


def test_an_unknown_objective_is_named(compose):
    with pytest.raises(PluginError, match="unknown objective 'nosuch'"):
        sweep.plan(["objective=dpo,nosuch"], compose)


def test_default_objectives_are_the_offline_policy_objectives():
    names = cli.default_objectives()
    assert {"dpo", "ipo", "kto", "orpo", "cpo", "slic", "robust_dpo", "bco", "nca", "apo",
            "sppo", "exo", "discopop", "aot", "sft"} <= set(names)
    # rankings, attributed records, online, reward models and combinations are left out
    assert not {"kwise", "steerlm", "attribute_model", "ppo", "reinforce", "reward_bt",
                "reward_pl", "mix"} & set(names)


def test_defaults_fill_only_the_keys_not_given():
    wanted, lenient = cli.with_defaults(["objective=dpo", "seed=3", "objective.beta=0.2"])
    keys = [o.split("=", 1)[0] for o in wanted]
    assert keys.count("objective") == 1 and keys.count("seed") == 1 and lenient == []
    assert f"trainer.max_steps={cli.DEFAULT_STEPS}" in wanted
    wanted, lenient = cli.with_defaults(["trainer.max_steps=7"])
    assert "trainer.max_steps=7" in wanted and lenient == ["beta"]
    assert f"objective.beta={cli.DEFAULT_BETAS}" in wanted
    assert f"seed={cli.DEFAULT_SEEDS}" in wanted


def test_a_key_under_an_open_mapping_is_the_objectives_to_check(compose):
    # rpo (a preset of mix) takes per-part settings under its open `settings`
    jobs = sweep.plan(["objective=rpo,sft", "objective.settings.dpo.beta=0.1,0.5"], compose)
    assert _jobs(jobs) == [("rpo", 0, "settings.dpo.beta=0.1"),
                           ("rpo", 0, "settings.dpo.beta=0.5"),
                           ("sft", 0, "(no settings.dpo.beta)")]
