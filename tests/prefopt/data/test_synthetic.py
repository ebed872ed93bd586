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


# -- attributed records (`pick`) ------------------------------------------------------------
def test_pick_answers_and_measured_attributes_by_hand():
    from prefopt.data.synthetic import measure_attributes, pick_answer

    assert pick_answer("pick 827491", order=1, length=3) == "987"
    assert pick_answer("pick 827491", order=0, length=2) == "12"
    assert measure_attributes("pick 827491", "987") == {"quality": 4, "order": 1, "length": 3}
    assert measure_attributes("pick 827491", "124") == {"quality": 4, "order": 0, "length": 3}
    # "129": ascending answer of length 3 is "124": one position wrong -> quality 3.
    assert measure_attributes("pick 827491", "129") == {"quality": 3, "order": 0, "length": 3}
    # "978": not monotone (no order); nearest right answer "987" differs in 2 places.
    assert measure_attributes("pick 827491", "978") == {"quality": 2, "order": None,
                                                        "length": 3}
    # One digit: no order; not digits, or longer than the prompt: quality 0.
    assert measure_attributes("pick 827491", "9") == {"quality": 4, "order": None, "length": 1}
    assert measure_attributes("pick 827", "abc")["quality"] == 0
    assert measure_attributes("pick 827", "8721")["quality"] == 0


def test_attributed_records_carry_their_measured_attributes():
    from prefopt.data.synthetic import SyntheticConfig, measure_attributes, splits

    cfg = SyntheticConfig(n_train=400, n_val=50)
    data = splits(cfg, "attributed")
    assert data == splits(cfg, "attributed")  # reproducible from the seed
    prompts = [r["prompt"] for r in data["train"]]
    assert not set(prompts) & {r["prompt"] for r in data["val"]}
    for r in data["train"]:
        digits = r["prompt"].split()[1]
        assert len(set(digits)) == len(digits) and cfg.min_digits <= len(digits) <= cfg.max_digits
        assert r["attributes"] == measure_attributes(r["prompt"], r["response"])
    corrupted = sum(r["attributes"]["quality"] < 4 for r in data["train"]) / 400
    assert 0.2 < corrupted < 0.4  # corrupted_fraction = 0.3
    assert {r["attributes"]["order"] for r in data["train"]} == {0, 1, None}
