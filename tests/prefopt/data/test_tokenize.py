"""Tokenisation: chat template, completion boundaries, and every declared rule."""

import pytest

from prefopt.data.collate import collate_groups
from prefopt.data.records import RecordError, pairwise_record
from prefopt.data.tokenize import Encoder, Rule, TokenizeConfig


def rec(prompt="sort 321", chosen="123", rejected="132", where="t.jsonl:1"):
    return pairwise_record(prompt=prompt, chosen=chosen, rejected=rejected, where=where)


def encode(tokenizer, record, **cfg):
    encoder = Encoder(tokenizer, TokenizeConfig(**cfg))
    return encoder.encode_all([record])


def test_chat_template_split_exact_tokens(tokenizer):
    (pair,), report = encode(tokenizer, rec())
    # The built-in template: <s><|user|>sort 321<|end|><|assistant|>  |  123<|end|>
    assert tokenizer.decode(pair.prompt) == "<s><|user|>sort 321<|end|><|assistant|>"
    assert tokenizer.decode(pair.chosen) == "123<|end|>"
    assert tokenizer.decode(pair.rejected) == "132<|end|>"
    assert report.kept == report.records == 1


def test_conversational_records_use_messages(tokenizer):
    record = rec(prompt=[{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "hi"}],
                 chosen=[{"role": "assistant", "content": "yo"}],
                 rejected=[{"role": "assistant", "content": "hello there"}])
    (pair,), _ = encode(tokenizer, record)
    assert tokenizer.decode(pair.prompt) == \
        "<s><|system|>be brief<|end|><|user|>hi<|end|><|assistant|>"
    assert tokenizer.decode(pair.chosen) == "yo<|end|>"


def test_plain_text_without_template(tokenizer):
    (pair,), _ = encode(tokenizer, rec(), chat_template=False)
    assert tokenizer.decode(pair.prompt) == "sort 321"
    assert tokenizer.decode(pair.chosen) == "123<|end|>"  # EOS ends every completion


def test_collate_masks_only_completion_tokens(tokenizer):
    (pair,), _ = encode(tokenizer, rec(rejected="1"))
    batch = collate_groups([pair], pad_id=tokenizer.pad_token_id)
    n_prompt = len(pair.prompt)
    assert batch["input_ids"].shape == (2, n_prompt + len(pair.chosen))
    chosen_mask, rejected_mask = batch["completion_mask"].tolist()
    assert chosen_mask == [False] * n_prompt + [True] * 4  # "123<|end|>"
    assert rejected_mask == [False] * n_prompt + [True] * 2 + [False] * 2  # "1<|end|>", pad
    assert batch["attention_mask"][1].tolist() == [1] * (n_prompt + 2) + [0, 0]
    assert batch["input_ids"][1, -1].item() == tokenizer.pad_token_id


# The prompt "<s><|user|>sort 321<|end|><|assistant|>" is 12 tokens (one per character).
@pytest.mark.parametrize("side,limit,kept", [("left", 5, "321<|end|><|assistant|>"),
                                             ("right", 8, "<s><|user|>sort 3")])
def test_prompt_truncation_side(tokenizer, side, limit, kept):
    (pair,), report = encode(tokenizer, rec(), max_prompt_length=limit, truncation_side=side)
    assert tokenizer.decode(pair.prompt) == kept
    assert report.truncated["prompt"] == 1


def test_completion_truncated_to_max_length_and_counted(tokenizer):
    # 12 prompt tokens + 8 ("1234567<|end|>") = 20 > 18: both completions cut to 6 tokens.
    (pair,), report = encode(tokenizer, rec(chosen="1234567", rejected="7654321"),
                             max_length=18)
    assert tokenizer.decode(pair.chosen) == "123456"
    assert len(pair.prompt) + len(pair.rejected) == 18
    assert report.truncated["completion"] == 1


@pytest.mark.parametrize("rule", ["skip", "error", "truncate"])
def test_overlong_prompt_rules(tokenizer, rule):
    record = rec(prompt="sort " + "9" * 40)
    if rule == "error":
        with pytest.raises(RecordError, match=r"t.jsonl:1: field 'prompt': overlong prompt"):
            encode(tokenizer, record, max_length=32, on_overlong_prompt=rule)
        return
    pairs, report = encode(tokenizer, record, max_length=32, on_overlong_prompt=rule)
    if rule == "skip":
        assert pairs == [] and report.skipped["overlong prompt"] == 1
    else:  # cut to max_length // 2 = 16 tokens, keeping the end
        assert len(pairs[0].prompt) == 16 and report.truncated["prompt"] == 1
        assert len(pairs[0].prompt) + len(pairs[0].chosen) <= 32


@pytest.mark.parametrize("rule", ["skip", "error", "keep"])
def test_empty_completion_rules(tokenizer, rule):
    record = rec(chosen="   ")
    if rule == "error":
        with pytest.raises(RecordError, match=r"field 'chosen': empty completion"):
            encode(tokenizer, record, on_empty_completion=rule)
        return
    pairs, report = encode(tokenizer, record, on_empty_completion=rule)
    assert len(pairs) == (rule == "keep")
    assert report.skipped["empty completion"] == (rule == "skip")


@pytest.mark.parametrize("rule", ["skip", "error", "keep"])
def test_identical_pair_rules(tokenizer, rule):
    record = rec(rejected="123")
    if rule == "error":
        with pytest.raises(RecordError, match=r"field 'rejected': identical pair"):
            encode(tokenizer, record, on_identical_pair=rule)
        return
    pairs, report = encode(tokenizer, record, on_identical_pair=rule)
    assert len(pairs) == (rule == "keep")
    assert report.skipped["identical pair"] == (rule == "skip")


def test_identical_after_truncation_is_caught(tokenizer):
    # Both answers start "123"; 12 prompt tokens + room for 3 leaves "123" and "123".
    pairs, report = encode(tokenizer, rec(chosen="12345", rejected="12399"), max_length=15)
    assert pairs == [] and report.skipped["identical pair"] == 1


def test_rule_that_does_not_apply_is_refused(tokenizer):
    with pytest.raises(ValueError, match="data.on_empty_completion must be one of"):
        Encoder(tokenizer, TokenizeConfig(on_empty_completion=Rule.truncate))
    with pytest.raises(ValueError, match="max_prompt_length"):
        Encoder(tokenizer, TokenizeConfig(max_length=10, max_prompt_length=10))


def test_report_counts_rankings_without_an_ordered_pair(tokenizer):
    from prefopt.data.records import parse_ranked

    records = [parse_ranked("r.jsonl:1", {"prompt": "sort 21", "completions": ["12", "21"],
                                          "ranks": [1, 2]}),
               parse_ranked("r.jsonl:2", {"prompt": "sort 31", "completions": ["13", "31"],
                                          "ranks": [1, 1]}),  # a tie: no ordered pair
               parse_ranked("r.jsonl:3", {"prompt": "sort 54", "completions": ["45", "54", "44"],
                                          "ranks": [2, 2, 2]})]
    groups, report = Encoder(tokenizer, TokenizeConfig()).encode_all(records)
    assert len(groups) == 3
    assert report.as_dict()["no_ordered_pair"] == 2
    assert "2 kept with no ordered pair" in report.summary()
    # Pairs are always ordered; unpaired records carry no ranks, so no count at all.
    assert encode(tokenizer, rec())[1].as_dict()["no_ordered_pair"] == 0


def test_report_counts_characters_the_tokenizer_cannot_see(tokenizer):
    """The tiny vocabulary is printable ASCII: "é" and "ü" become its unknown token. By hand:
    the prompt holds é twice, the chosen completion ü once, the rejected one nothing."""
    (pair,), report = encode(tokenizer, rec(prompt="trié é", chosen="ü1", rejected="12"))
    assert report.unknown_tokens == 3
    assert report.as_dict()["unknown_tokens"] == 3
    assert report.as_dict()["unknown_characters"] == {"é": 2, "ü": 1}
    assert "3 unknown tokens (characters 'éü')" in report.summary()
    assert pair.chosen.count(tokenizer.unk_token_id) == 1  # the record is still kept
    clean = encode(tokenizer, rec())[1].as_dict()
    assert clean["unknown_tokens"] == 0 and clean["unknown_characters"] == {}
