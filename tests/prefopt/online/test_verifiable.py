"""The verifiable reward `exact_match`: extraction, normalisation, numbers (expected values
written by hand), and math-verify when it is installed."""

import importlib.util

import pytest

from prefopt.online import rewards
from prefopt.online.verifiable import (
    answers_match,
    exact_match,
    extract_answer,
    normalise,
)


@pytest.mark.parametrize("text, expected", [
    ("  The   Cat. ", "the cat"),
    ("19", "19"),
    ("\tA\nB ", "a b"),
    ("3.", "3"),
    ("", ""),
])
def test_normalise(text, expected):
    assert normalise(text) == expected


@pytest.mark.parametrize("completion, expected", [
    ("19", "19"),
    ("  19 \n", "19"),
    ("so \\boxed{12} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("work 3+4=7\n#### 7", "7"),
    ("#### 1 #### 2 ", "2"),
    ("The answer is 42", "42"),
    ("Answer: paris", "paris"),
    ("\\boxed{unclosed", "\\boxed{unclosed"),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("answer, gold", [
    ("19", "19"), ("19.0", "19"), (" 19 ", "19"), ("+19", "19"), ("19.000", "19"),
    ("1,000", "1000"), ("0.5", "1/2"), ("-3", "-3.0"), ("Paris", " paris "),
    ("so the sum is 19", "19"), ("19.", "19"),
])
def test_matches(answer, gold):
    assert answers_match(answer, gold)


@pytest.mark.parametrize("answer, gold", [
    ("18", "19"), ("190", "19"), ("1.9", "19"), ("", "19"), ("nineteen", "19"),
    ("19 apples", "apples"), ("london", "paris"), ("19", "-19"), ("19", "1/19"),
])
def test_mismatches(answer, gold):
    assert not answers_match(answer, gold)


def test_the_reward_is_one_or_zero_on_the_records_answer():
    fn = exact_match(backend="builtin")
    assert fn("12+7=", "19", answer="19") == 1.0
    assert fn("12+7=", " 19.0", answer=19) == 1.0  # a number as gold works too
    assert fn("12+7=", "18", answer="19") == 0.0
    assert fn("q", "I think \\boxed{19}", answer="19") == 1.0


def test_exact_match_is_an_installed_factory():
    assert "exact_match" in rewards.available()
    reward = rewards.build_reward(rewards.RewardConfig(function="exact_match"))
    assert isinstance(reward, rewards.FunctionReward)


MATH_VERIFY = importlib.util.find_spec("math_verify") is not None


@pytest.mark.skipif(MATH_VERIFY, reason="math-verify is installed: the fallback is not used")
def test_without_math_verify_auto_is_the_builtin_matcher_and_math_verify_is_refused():
    auto = exact_match()
    assert auto("q", "19.0", answer="19") == 1.0
    assert auto("q", "\\frac{1}{2}", answer="0.5") == 0.0  # LaTeX needs math-verify
    with pytest.raises(ImportError, match=r"prefopt\[verify\]"):
        exact_match(backend="math_verify")


@pytest.mark.skipif(not MATH_VERIFY, reason="math-verify is not installed (pip install "
                    "'prefopt[verify]')")
def test_with_math_verify_latex_answers_match():
    fn = exact_match(backend="math_verify")
    assert fn("q", "$\\frac{1}{2}$", answer="0.5") == 1.0
    assert fn("q", "19.0", answer="19") == 1.0  # what the built-in accepts stays accepted
    assert fn("q", "$\\frac{1}{3}$", answer="0.5") == 0.0
    assert exact_match(backend="builtin")("q", "$\\frac{1}{2}$", answer="0.5") == 0.0
