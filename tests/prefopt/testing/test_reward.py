"""check_reward (prefopt.testing.reward): the built-in reward passes; toy rewards, each
broken in one way, fail for that reason."""

import importlib
import sys
import textwrap

import pytest

from prefopt import registry
from prefopt.data import synthetic
from prefopt.testing import REWARD_CHECKS, ConformanceError, check_reward

TOYS = """
    import itertools
    import math

    def good(prompt, completion):
        '''Text or chat prompts: the length of the last message, minus the completion's.'''
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        return float(len(text) - len(completion))

    def length(*, target: int = 4, scale: float = 1.0):
        return lambda prompt, completion: -scale * abs(len(completion) - target)

    def text_only(prompt, completion):
        return float(len(prompt.split()))

    def nan_on_empty(prompt, completion):
        return math.nan if completion == "" else 1.0

    def a_string(prompt, completion):
        return "0.5"

    _counter = itertools.count()

    def drifting(prompt, completion):
        return float(next(_counter))

    def not_a_function(*, target: int = 1):
        return target

    def other(prompt, completion):
        return 0.0
"""

ENTRY_POINTS = {name: f"fakereward_toys:{name}" for name in (
    "good", "length", "text_only", "nan_on_empty", "a_string", "drifting", "not_a_function")}


@pytest.fixture
def toys(tmp_path, monkeypatch):
    """The module of the toy rewards, each declared under its own name in prefopt.rewards
    (and `aliased` pointing at `other`) by a distribution on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    info = tmp_path / "toyrewards-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyrewards\nVersion: 0.1\n")
    entries = {**ENTRY_POINTS, "aliased": "fakereward_toys:other"}
    (info / "entry_points.txt").write_text(
        "[prefopt.rewards]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    (tmp_path / "fakereward_toys.py").write_text(textwrap.dedent(TOYS))
    importlib.invalidate_caches()
    registry.clear_caches()
    yield importlib.import_module("fakereward_toys")
    sys.modules.pop("fakereward_toys", None)  # a fresh module, counter and all, each test
    registry.clear_caches()


def test_the_builtin_synthetic_reward_passes_on_text_prompts():
    assert check_reward(synthetic.score, "synthetic", chat=False) == list(REWARD_CHECKS)


def test_the_builtin_synthetic_reward_does_not_read_chat_prompts():
    # synthetic.score parses its task's prompt strings; the first chat sample is sample 4.
    with pytest.raises(ConformanceError, match=r"reward function 'synthetic' raised "
                                               r"\w+Error: .* on sample 4 \(prompt "
                                               r"\[\{'role': 'user'"):
        check_reward(synthetic.score, "synthetic")


def test_correct_toys_pass(toys):
    assert check_reward(toys.good, "good") == list(REWARD_CHECKS)
    assert check_reward(toys.length, "length", kwargs={"target": 8}) == list(REWARD_CHECKS)
    assert check_reward(toys.length, "length") == list(REWARD_CHECKS)  # its defaults


def test_not_installed(toys):
    with pytest.raises(ConformanceError) as err:
        check_reward(toys.other, "other")
    message = str(err.value)
    assert message.startswith("no reward 'other' is installed: declare `other = "
                              "\"<module>:other\"` under [project.entry-points."
                              "\"prefopt.rewards\"]")
    assert "synthetic" in message and "\n" not in message


def test_the_entry_point_loads_another_object(toys):
    with pytest.raises(ConformanceError, match=r"^the entry point toyrewards==0\.1 \(good = "
                                               r"fakereward_toys:good\) loads <function good "
                                               r".*, not <function other"):
        check_reward(toys.other, "good")


@pytest.mark.parametrize("toy,kwargs,message", [
    ("text_only", None, r"^reward function 'text_only' raised AttributeError: .* on sample "
                        r"4 \(prompt \[\{'role': 'user', 'content': 'sort 321'\}\]"),
    ("nan_on_empty", None, r"^reward function 'nan_on_empty' returned nan on sample 2 "
                           r"\(prompt 'sort 9075', completion ''\)"),
    ("a_string", None, r"^reward function 'a_string' returned '0\.5' \(str\), not a number, "
                       r"on sample 0"),
    ("drifting", None, r"^reward 'drifting' is not deterministic: sample 0 \(prompt "
                       r"'sort 321', completion '123'\) scored 0\.0 and then 8\.0$"),
    ("not_a_function", None, r"^reward 'not_a_function': reward.function=not_a_function: "
                             r"the reward factory returned 1 \(int\), not a function"),
    ("length", {"target": "8"}, r"^reward 'length': reward\.kwargs\.target='8': the reward "
                                r"factory length wants target: int, got str$"),
    ("length", {"tagret": 8}, r"^reward 'length': reward\.kwargs\.tagret: the reward factory "
                              r"length takes no argument 'tagret'; it accepts: target: int, "
                              r"scale: float$"),
    ("good", {"target": 8}, r"^reward 'good': reward\.kwargs\.target: reward\.function=good "
                            r"is a reward function fn\(prompt, completion\), not a factory"),
])
def test_broken_toys_fail_for_their_reason(toys, toy, kwargs, message):
    with pytest.raises(ConformanceError, match=message) as err:
        check_reward(getattr(toys, toy), toy, kwargs)
    assert "\n" not in str(err.value)


def test_a_text_only_reward_passes_with_chat_false(toys):
    assert check_reward(toys.text_only, "text_only", chat=False) == list(REWARD_CHECKS)


def test_check_reward_does_not_import_the_package_init():
    import ast

    tree = ast.parse(open(importlib.util.find_spec("prefopt.testing.reward").origin).read())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names]
    assert "prefopt.testing" not in imported
