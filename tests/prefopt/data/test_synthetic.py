"""The built-in task: answers, checks and scores by hand; splits disjoint and reproducible."""

import pytest

from prefopt.data import synthetic
from prefopt.data.synthetic import SyntheticConfig, is_correct, pairwise_splits, score, solve


def test_solve_by_hand():
    assert solve("sort 5213") == "1235"
    assert solve("reverse 5213") == "3125"
    assert solve("sort 9090") == "0099"


def test_check_and_score():
    assert is_correct("sort 5213", "1235") and is_correct("sort 5213", " 1235 ")
    assert not is_correct("sort 5213", "1253")
    # 1235 vs 1253: positions 0, 1 right, 2, 3 wrong -> 2/4
    assert score("sort 5213", "1253") == 0.5
    # 123 vs 1235: three of four positions (the missing one counts as wrong) -> 3/4
    assert score("sort 5213", "123") == 0.75
    assert score("sort 5213", "1235") == 1.0


def test_bad_prompt_is_refused():
    with pytest.raises(ValueError, match="not a prompt"):
        solve("shuffle 123")


def test_pairs_prefer_the_correct_answer():
    splits = pairwise_splits(SyntheticConfig(n_train=300, n_val=50))
    assert len(splits["train"]) == 300 and len(splits["val"]) == 50
    for record in splits["train"] + splits["val"]:
        assert is_correct(record["prompt"], record["chosen"])
        assert not is_correct(record["prompt"], record["rejected"])


def test_splits_disjoint_and_reproducible():
    cfg = SyntheticConfig(n_train=500, n_val=100, seed=7)
    a, b = pairwise_splits(cfg), pairwise_splits(cfg)
    assert a == b
    assert not {r["prompt"] for r in a["train"]} & {r["prompt"] for r in a["val"]}
    assert pairwise_splits(SyntheticConfig(n_train=500, n_val=100, seed=8)) != a


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="data.synthetic.operations"):
        pairwise_splits(SyntheticConfig(operations=["shuffle"]))
    with pytest.raises(ValueError, match="min_digits"):
        pairwise_splits(SyntheticConfig(min_digits=5, max_digits=3))


def test_every_operation_is_used():
    prompts = [r["prompt"] for r in pairwise_splits(SyntheticConfig(n_train=200))["train"]]
    assert {p.split()[0] for p in prompts} == set(synthetic.OPERATIONS)
