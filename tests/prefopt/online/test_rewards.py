"""Reward sources: functions by entry point or dotted path, reward models, and bad values."""

import math

import pytest
import torch

from prefopt.data import synthetic
from prefopt.online.rewards import (
    FunctionReward,
    ModelReward,
    RewardConfig,
    RewardError,
    apply_missing_eos_penalty,
    available,
    build_reward,
    resolve_function,
)


def _raises_on_the_second(prompt, completion):
    if completion == "boom":
        raise KeyError("no such digit")
    return 1.0


def test_the_synthetic_reward_is_an_installed_entry_point():
    assert "synthetic" in available()
    assert resolve_function("synthetic") is synthetic.score
    reward = build_reward(RewardConfig())
    # score: the share of positions right, over the longer string.
    torch.testing.assert_close(reward(["sort 321", "sort 321", "reverse 12"],
                                      ["123", "132", "2"]),
                               torch.tensor([1.0, 1 / 3, 0.5]))


@pytest.mark.parametrize("spec", ["prefopt.data.synthetic:score", "prefopt.data.synthetic.score"])
def test_dotted_paths(spec):
    assert resolve_function(spec) is synthetic.score


@pytest.mark.parametrize("spec,message", [
    ("nosuch", "neither an installed reward"),
    ("nosuch_module_xyz:fn", "cannot import it"),
    ("prefopt.data.synthetic:nosuch", "cannot import it"),
    ("prefopt.data.synthetic:OPERATIONS", "not a function"),
])
def test_unresolvable_functions_are_named(spec, message):
    with pytest.raises(RewardError, match=message) as err:
        resolve_function(spec)
    assert spec in str(err.value)


def test_exactly_one_source():
    with pytest.raises(RewardError, match="exactly one source"):
        build_reward(RewardConfig(function="synthetic", model="/some/dir"))
    with pytest.raises(RewardError, match="exactly one source"):
        build_reward(RewardConfig(function=None))


def test_a_raising_function_names_itself_and_the_sample():
    reward = FunctionReward(_raises_on_the_second, "tests:_raises_on_the_second")
    with pytest.raises(RewardError) as err:
        reward(["sort 12", "sort 34"], ["12", "boom"])
    message = str(err.value)
    assert "tests:_raises_on_the_second" in message and "KeyError" in message
    assert "sample 1" in message and "'sort 34'" in message and "'boom'" in message


@pytest.mark.parametrize("value,message", [
    (math.nan, "returned nan"), (math.inf, "returned inf"),
    ("0.5", "not a number"), (None, "not a number"), (True, "not a number"),
])
def test_values_that_cannot_be_trained_on_are_refused(value, message):
    reward = FunctionReward(lambda p, c: value if c == "b" else 0.0, "bad")
    with pytest.raises(RewardError, match=message) as err:
        reward(["x", "y"], ["a", "b"])
    assert "sample 1" in str(err.value)


def test_tensor_scalars_and_ints_are_numbers():
    reward = FunctionReward(lambda p, c: torch.tensor(0.25) if c == "a" else 2, "ok")
    torch.testing.assert_close(reward(["x", "y"], ["a", "b"]), torch.tensor([0.25, 2.0]))


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 0.5, 0.0])
    ended = torch.tensor([True, False, False])
    torch.testing.assert_close(apply_missing_eos_penalty(scores, ended, 0.25),
                               torch.tensor([1.0, 0.25, -0.25]))
    assert apply_missing_eos_penalty(scores, ended, None) is scores


def test_reward_model_source_scores_as_its_scorer(tokenizer, tmp_path):
    from prefopt.models import ModelConfig, build_policy
    from prefopt.steer.scorer import RewardScorer

    torch.manual_seed(0)
    build_policy(ModelConfig(), tokenizer, reward_head=True).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    source = build_reward(RewardConfig(function=None, model=str(tmp_path), batch_size=2))
    assert isinstance(source, ModelReward)
    prompts, completions = ["sort 321", "reverse 12", "sort 9"], ["123", "21", "9"]
    torch.testing.assert_close(source(prompts, completions),
                               RewardScorer.load(str(tmp_path)).score(prompts, completions))


# -- rewards follow the objectives' registry rules --------------------------------------

@pytest.fixture
def reward_dists(tmp_path, monkeypatch):
    """make(dist, {name: "module:function"}, sources={module: code}) puts a distribution
    declaring reward functions on sys.path."""
    import importlib
    import textwrap

    from prefopt import registry

    monkeypatch.syspath_prepend(str(tmp_path))

    def make(dist, rewards, sources=None):
        info = tmp_path / f"{dist}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(
            "[prefopt.rewards]\n" + "".join(f"{k} = {v}\n" for k, v in rewards.items()))
        for module, code in (sources or {}).items():
            (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
        importlib.invalidate_caches()
        registry.clear_caches()

    yield make
    registry.clear_caches()


def test_two_distributions_declaring_one_reward_name(reward_dists):
    from prefopt.registry import PluginError

    reward_dists("alpha", {"twin": "fakereward_a:fn"})
    reward_dists("beta", {"twin": "fakereward_b:fn"})
    with pytest.raises(PluginError, match=r"two distributions declare the reward 'twin': "
                                          r"(alpha|beta)==1\.2\.3 .* and (alpha|beta)==1\.2\.3"):
        available()


def test_a_third_party_never_shadows_the_builtin_reward(reward_dists):
    from prefopt.registry import PluginError

    reward_dists("evil", {"synthetic": "fakereward_evil:fn"})
    with pytest.raises(PluginError, match=r"the reward 'synthetic': .*evil==1\.2\.3.*"
                                          r"prefopt==0\.1\.0|prefopt==0\.1\.0.*evil==1\.2\.3"):
        resolve_function("synthetic")


def test_a_broken_reward_is_reported_with_its_distribution_and_error(reward_dists):
    from prefopt.online.rewards import listing
    from prefopt.registry import PluginWarning

    reward_dists("shaky", {"gone": "fakereward_pkg_missing:fn",  # package not installed
                           "typo": "fakereward_shaky:nosuch"},  # module there, no function
                 sources={"fakereward_shaky": "def fn(prompt, completion):\n    return 1.0\n"})
    with pytest.warns(PluginWarning, match=r"reward 'gone' from shaky==1\.2\.3"):
        rows = {name: what for name, _, what in listing()}
    assert rows["gone"].startswith("BROKEN: reward.function=gone: the reward 'gone' from "
                                   "shaky==1.2.3 (gone = fakereward_pkg_missing:fn) cannot be "
                                   "loaded: its package 'fakereward_pkg_missing' is not "
                                   "installed")
    assert rows["typo"].startswith("BROKEN: reward.function=typo: the reward 'typo' from "
                                   "shaky==1.2.3 (typo = fakereward_shaky:nosuch) failed to "
                                   "load: AttributeError")
    assert rows["synthetic"] == "reward function prefopt.data.synthetic:score"


def test_reward_equals_an_installed_name_selects_the_function(reward_dists, compose):
    reward_dists("extra", {"always_one": "fakereward_extra:fn"},
                 sources={"fakereward_extra": "def fn(prompt, completion):\n    return 1.0\n"})
    cfg = compose("objective=reinforce", "reward=always_one")
    assert (cfg.reward.function, cfg.reward.model) == ("always_one", None)
    assert compose("objective=reinforce", "reward=synthetic").reward.function == "synthetic"


def test_reward_equals_an_unknown_name_points_at_reward_function(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"^reward=nosuch: no reward config or "
                                                         r"installed reward function 'nosuch' .*"
                                                         r"reward\.function=nosuch"):
        compose("objective=reinforce", "reward=nosuch")


# -- reward factories: reward.kwargs -----------------------------------------------------

FACTORIES = '''
def length(*, target: int = 4, scale: float = 1.0):
    """Minus scale times the distance of the completion's length from target."""
    def fn(prompt, completion):
        return -scale * abs(len(completion) - target)
    return fn

def needs_cutoff(*, cutoff: int, mode: str = "hard"):
    return lambda prompt, completion: float(len(completion) > cutoff)

def not_a_function(*, target: int = 1):
    return target

def plain(prompt, completion):
    return 1.0

from typing import Literal, Optional

def typed(*, limit: Optional[int] = None, mode: Literal["sum", "max"] = "sum",
          ids: list[int] = (), weights: dict[str, float] = None, pair: tuple[int, float] = (0, 0.0),
          anything=None):
    seen = dict(limit=limit, mode=mode, ids=ids, weights=weights, pair=pair, anything=anything)
    fn = lambda prompt, completion: 0.0
    fn.seen = seen
    return fn
'''


@pytest.fixture
def factories(reward_dists):
    reward_dists("lengthy", {"length": "fakereward_factories:length"},
                 sources={"fakereward_factories": FACTORIES})


def test_a_factory_gets_its_kwargs_from_the_command_line(factories, compose):
    from omegaconf import OmegaConf

    cfg = compose("objective=reinforce", "reward=length", "reward.kwargs.target=8")
    assert OmegaConf.to_container(cfg.reward.kwargs) == {"target": 8}
    reward = build_reward(OmegaConf.to_object(cfg.reward))
    # -|8 - 8| = 0, -|3 - 8| = -5
    torch.testing.assert_close(reward(["p", "q"], ["12345678", "123"]), torch.tensor([0.0, -5.0]))
    assert reward.name == "length(target=8)"
    # No kwargs: the factory's defaults, target 4: -|4 - 4| = 0, -|0 - 4| = -4.
    reward = build_reward(RewardConfig(function="length"))
    torch.testing.assert_close(reward(["p", "q"], ["1234", ""]), torch.tensor([0.0, -4.0]))
    # An int where the annotation says float is passed as one: -2.0 * |2 - 8| = -12.
    reward = build_reward(RewardConfig(function="fakereward_factories:length",
                                       kwargs={"target": 8, "scale": 2}))
    torch.testing.assert_close(reward(["p"], ["12"]), torch.tensor([-12.0]))


def test_the_builtin_reward_config_has_empty_kwargs(compose):
    cfg = compose("objective=reinforce")
    assert (cfg.reward.function, dict(cfg.reward.kwargs)) == ("synthetic", {})
    assert dict(compose("objective=reinforce", "reward=model",
                        "reward.model=/x").reward.kwargs) == {}


@pytest.mark.parametrize("kwargs,message", [
    ({"target": "abc"}, "reward.kwargs.target='abc': the reward factory "
                        "fakereward_factories:length wants target: int, got str"),
    ({"target": True}, "reward.kwargs.target=True: the reward factory "
                       "fakereward_factories:length wants target: int, got bool"),
    ({"scale": [1]}, "reward.kwargs.scale=[1]: the reward factory "
                     "fakereward_factories:length wants scale: float, got list"),
    ({"tagret": 8}, "reward.kwargs.tagret: the reward factory fakereward_factories:length "
                    "takes no argument 'tagret'; it accepts: target: int, scale: float"),
])
def test_factory_kwargs_mistakes_are_one_line_naming_the_key(factories, kwargs, message):
    with pytest.raises(RewardError) as err:
        build_reward(RewardConfig(function="fakereward_factories:length", kwargs=kwargs))
    assert str(err.value) == message


def test_factory_mistakes_of_the_factory_or_the_config(factories):
    with pytest.raises(RewardError) as err:
        build_reward(RewardConfig(function="fakereward_factories:needs_cutoff"))
    assert str(err.value) == ("reward.kwargs.cutoff: the reward factory "
                              "fakereward_factories:needs_cutoff needs it "
                              "(reward.kwargs.cutoff=<value>); it accepts: cutoff: int, "
                              "mode: str")
    with pytest.raises(RewardError) as err:
        build_reward(RewardConfig(function="fakereward_factories:not_a_function"))
    assert str(err.value) == ("reward.function=fakereward_factories:not_a_function: the reward "
                              "factory returned 1 (int), not a function "
                              "fn(prompt, completion) -> float")
    with pytest.raises(RewardError) as err:
        build_reward(RewardConfig(function="fakereward_factories:plain", kwargs={"target": 8}))
    assert str(err.value).startswith("reward.kwargs.target: reward.function="
                                     "fakereward_factories:plain is a reward function "
                                     "fn(prompt, completion), not a factory")
    with pytest.raises(RewardError) as err:
        build_reward(RewardConfig(function=None, model="/some/dir", kwargs={"target": 8}))
    assert str(err.value).startswith("reward.kwargs.target: reward.kwargs are for a reward "
                                     "factory named in reward.function")
    # 6 > 5: 1.0; 3 > 5: no, 0.0.
    reward = build_reward(RewardConfig(function="fakereward_factories:needs_cutoff",
                                       kwargs={"cutoff": 5}))
    torch.testing.assert_close(reward(["p", "q"], ["123456", "123"]), torch.tensor([1.0, 0.0]))


def test_listing_says_factory(factories):
    from prefopt.online.rewards import listing

    rows = {name: what for name, _, what in listing()}
    assert rows["length"] == "reward factory fakereward_factories:length"
    assert rows["synthetic"] == "reward function prefopt.data.synthetic:score"


def test_the_documented_factory_and_its_errors_are_true(tmp_path, monkeypatch):
    """docs/online.md's factory example scores as it says, and its error lines are the
    errors prefopt gives (the module path changed to where the test puts the code)."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "online.md").read_text()
    (code,) = re.findall(r"```python\n# my_package/rewards.py\n(.*?)```", docs, re.S)
    (tmp_path / "docs_rewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "reward.kwargs.target=8" in docs and "-abs(3 - 8) = -5.0" in docs
    reward = build_reward(RewardConfig(function="docs_rewards:length", kwargs={"target": 8}))
    torch.testing.assert_close(reward(["p"], ["123"]), torch.tensor([-5.0]))
    for kwargs in ({"tagret": 8}, {"target": "eight"}):
        with pytest.raises(RewardError) as err:
            build_reward(RewardConfig(function="docs_rewards:length", kwargs=kwargs))
        documented = str(err.value).replace("docs_rewards:length", "my_package.rewards:length")
        assert documented + "\n" in docs


def test_annotations_the_kwargs_are_checked_against(factories):
    from prefopt.online.rewards import make_function, resolve_function

    typed = resolve_function("fakereward_factories:typed")
    fn = make_function(typed, {"limit": None, "mode": "max", "ids": [1, 2],
                               "weights": {"a": 1, "b": 0.5}, "pair": [3, 4],
                               "anything": object}, "typed")
    # ints become floats where a float is wanted: weights' values, the pair's second.
    assert fn.seen == {"limit": None, "mode": "max", "ids": [1, 2],
                       "weights": {"a": 1.0, "b": 0.5}, "pair": (3, 4.0), "anything": object}
    assert isinstance(fn.seen["weights"]["a"], float) and isinstance(fn.seen["pair"][1], float)
    assert make_function(typed, {"limit": 3}, "typed").seen["limit"] == 3
    for key, value in [("limit", 2.5), ("mode", "min"), ("ids", [1, "2"]), ("ids", 1),
                       ("weights", {"a": "x"}), ("weights", {1: 1.0}), ("pair", [1, 2, 3]),
                       ("pair", [1.5, 2])]:
        with pytest.raises(RewardError, match=rf"^reward\.kwargs\.{key}=.*: the reward factory "
                                              rf"typed wants {key}: ") as err:
            make_function(typed, {key: value}, "typed")
        assert "\n" not in str(err.value)


def test_kwargs_as_an_omegaconf_node_are_made_plain(factories):
    from omegaconf import OmegaConf

    from prefopt.online.rewards import make_function, resolve_function

    typed = resolve_function("fakereward_factories:typed")
    fn = make_function(typed, OmegaConf.create({"ids": [1, 2], "weights": {"a": 1}}), "typed")
    assert fn.seen["ids"] == [1, 2] and fn.seen["weights"] == {"a": 1.0}
