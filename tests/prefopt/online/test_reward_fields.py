"""Record fields reach reward functions as keyword arguments; two-argument functions keep
working; a missing field is a one-line error naming it and the record."""

import pytest

from prefopt.data.prompts import collate_prompts, prompt_fields, with_fields
from prefopt.data.records import PARSERS
from prefopt.online.rewards import FunctionReward, RewardError

PROMPTS = [with_fields("12+7=", {"answer": "19", "source": "a"}, "f.jsonl:1"),
           with_fields("3+4=", {"answer": "7", "source": "b"}, "f.jsonl:2")]


def test_a_two_argument_function_gets_no_fields():
    seen = []

    def two(prompt, completion):
        seen.append((prompt, completion))
        return len(completion)

    assert FunctionReward(two, "two")(PROMPTS, ["19", "8!"]).tolist() == [2.0, 2.0]
    assert seen == [("12+7=", "19"), ("3+4=", "8!")]


def test_named_fields_reach_their_parameters_only():
    def check(prompt, completion, answer):
        return float(completion == answer)

    def keyword(prompt, completion, *, answer, scale=2.0):
        return scale * (completion == answer)

    assert FunctionReward(check, "check")(PROMPTS, ["19", "8"]).tolist() == [1.0, 0.0]
    assert FunctionReward(keyword, "kw")(PROMPTS, ["19", "7"]).tolist() == [2.0, 2.0]


def test_var_keyword_gets_every_field():
    got = []

    def every(prompt, completion, **fields):
        got.append(fields)
        return 0.0

    FunctionReward(every, "every")(PROMPTS, ["x", "y"])
    assert got == [{"answer": "19", "source": "a"}, {"answer": "7", "source": "b"}]


def test_a_missing_field_is_named_with_the_record():
    def needs_solution(prompt, completion, solution):
        return 0.0

    with pytest.raises(RewardError) as err:
        FunctionReward(needs_solution, "my:fn")(PROMPTS, ["19", "7"])
    message = str(err.value)
    assert "\n" not in message
    assert "'solution'" in message and "f.jsonl:1" in message and "my:fn" in message
    assert "prompt, answer, source" in message


def test_a_field_with_a_default_may_be_missing():
    def optional(prompt, completion, solution=None):
        return float(solution is None)

    assert FunctionReward(optional, "opt")(PROMPTS, ["a", "b"]).tolist() == [1.0, 1.0]


def test_a_plain_prompt_has_no_fields():
    assert prompt_fields("12+7=") == {}
    fielded = with_fields([{"role": "user", "content": "hi"}], {"answer": 1}, "r")
    assert fielded == [{"role": "user", "content": "hi"}]
    assert prompt_fields(fielded) == {"answer": 1}


def test_prompt_records_keep_their_other_fields_into_the_batch(tokenizer):
    from prefopt.data.prompts import EncodedPrompt

    record = PARSERS["prompts"]("f.jsonl:3", {"prompt": "1+1=", "answer": "2", "id": 7})
    assert dict(record.extra) == {"answer": "2", "id": 7}
    text = with_fields(record.prompt, dict(record.extra), record.where)
    batch = collate_prompts([EncodedPrompt(text, [1, 2], record.where)])
    assert batch["prompts"] == ["1+1="]
    assert prompt_fields(batch["prompts"][0]) == {"answer": "2", "id": 7}


def test_the_arithmetic_answers_reach_exact_match_through_a_reinforce_rollout(compose):
    """reward=exact_match on data=arithmetic: the prompt batch carries each record's
    `answer` through the sampler to the reward."""
    import re

    import torch

    from prefopt.training.train import build

    module, datamodule, _ = build(compose("objective=reinforce", "data=arithmetic",
                                          "reward=exact_match", "data.arithmetic.n_train=8",
                                          "rollout.num_samples=2", "rollout.max_new_tokens=3"))
    datamodule.setup("fit")
    batch = collate_prompts(datamodule.groups["val"][:4])
    rollout = module._sample(batch, greedy=False)
    assert [prompt_fields(p) for p in rollout.prompts] == [
        prompt_fields(p) for p in batch["prompts"] for _ in range(2)]

    def right(prompt):
        a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt).groups()
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))

    answers = [right(p) for p in rollout.prompts]
    assert module.reward(rollout.prompts, answers).tolist() == [1.0] * 8
    wrong = [str(int(a) + 1) for a in answers]
    assert torch.equal(module.reward(rollout.prompts, wrong), torch.zeros(8))
