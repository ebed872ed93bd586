"""The built-in arithmetic task: deterministic per seed, answers right (checked by Python's
own arithmetic on the parsed text), disjoint train and val prompts."""

import re

import pytest

from prefopt.data.arithmetic import ArithmeticConfig, expressions, splits


def _evaluate(prompt: str) -> int:
    a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def test_same_seed_same_records_other_seed_other_records():
    cfg = ArithmeticConfig(n_train=200, n_val=20)
    assert splits(cfg, "prompts") == splits(ArithmeticConfig(n_train=200, n_val=20),
                                            "prompts")
    assert splits(cfg, "pairwise") == splits(cfg, "pairwise")
    other = splits(ArithmeticConfig(n_train=200, n_val=20, seed=7), "prompts")
    assert other["val"] != splits(cfg, "prompts")["val"]


def test_answers_are_right_and_never_negative():
    data = splits(ArithmeticConfig(n_train=300, n_val=30), "prompts")
    for record in data["train"] + data["val"]:
        assert record["answer"] == str(_evaluate(record["prompt"]))
        assert _evaluate(record["prompt"]) >= 0
        a, b = map(int, re.findall(r"\d+", record["prompt"]))
        assert 0 <= a <= 20 and 0 <= b <= 20


def test_pairs_prefer_the_answer_over_a_wrong_one_on_the_same_prompts():
    cfg = ArithmeticConfig(n_train=300, n_val=30)
    pairs, prompts = splits(cfg, "pairwise"), splits(cfg, "prompts")
    for name in ("train", "val"):
        assert [p["prompt"] for p in pairs[name]] == [p["prompt"] for p in prompts[name]]
        for pair in pairs[name]:
            assert pair["chosen"] == str(_evaluate(pair["prompt"]))
            assert pair["rejected"] != pair["chosen"] and int(pair["rejected"]) >= 0


def test_val_prompts_are_distinct_and_never_trained_on():
    data = splits(ArithmeticConfig(n_train=2000, n_val=50), "prompts")
    val = [r["prompt"] for r in data["val"]]
    assert len(set(val)) == 50
    assert not set(val) & {r["prompt"] for r in data["train"]}


def test_every_expression_counted():
    # 0..2 with + and -: 9 sums, and differences (a, b) with b <= a: 6.
    assert len(expressions(ArithmeticConfig(max_operand=2))) == 15
    assert len(expressions(ArithmeticConfig(max_operand=2, operations=["+"]))) == 9


@pytest.mark.parametrize("kwargs, message", [
    ({"operations": ["*"]}, "data.arithmetic.operations"),
    ({"n_val": 15, "max_operand": 2}, r"data.arithmetic.n_val=15: the task has 15"),
    ({"max_operand": 0}, "max_operand"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        splits(ArithmeticConfig(**kwargs), "prompts")


def test_the_preset_feeds_sft_and_online_prompts(compose):
    from omegaconf import OmegaConf

    from prefopt.data.datamodule import load_splits

    cfg = OmegaConf.to_object(compose("data=arithmetic", "data.arithmetic.n_train=10").data)
    prompts = load_splits(cfg, "prompts", 0)
    assert len(prompts["train"]) == 10 and len(prompts["val"]) == 64
    record = prompts["val"][0]
    assert dict(record.extra) == {"answer": str(_evaluate(record.prompt))}
    assert record.where == "arithmetic val record 0"
    pairs = load_splits(cfg, "pairwise", 0)
    assert pairs["val"][0].chosen == str(_evaluate(pairs["val"][0].prompt))
