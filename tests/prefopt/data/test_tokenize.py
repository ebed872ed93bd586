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


def test_plain_text_completion_ending_in_eos_gets_no_second_one(tokenizer):
    (pair,), _ = encode(tokenizer, rec(chosen="123<|end|>"), chat_template=False)
    assert tokenizer.decode(pair.chosen) == "123<|end|>"
    assert tokenizer.decode(pair.rejected) == "132<|end|>"


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
    assert report.truncated == {"chosen": 1, "rejected": 1}  # by field: both were cut


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
    with pytest.raises(ValueError, match="data.completion_tokens must be one of"):
        Encoder(tokenizer, TokenizeConfig(completion_tokens="jointly"))
    with pytest.raises(ValueError, match="data.max_length must be at least 2 tokens"):
        Encoder(tokenizer, TokenizeConfig(max_length=1))


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


def test_a_prompt_limit_not_below_max_length_is_clamped_with_a_warning(tokenizer, caplog):
    """data=files keeps max_prompt_length=512; data.max_length=128 on the command line then
    limits prompts to 128 // 2 = 64 tokens instead of refusing the run, with one warning
    however many encoders the run builds (one per split, one for generation)."""
    from prefopt.data.tokenize import _warn_clamped_prompt_limit

    _warn_clamped_prompt_limit.cache_clear()  # said once per process: start afresh
    encoder = Encoder(tokenizer, TokenizeConfig(max_length=128, max_prompt_length=512))
    Encoder(tokenizer, TokenizeConfig(max_length=128, max_prompt_length=512))
    assert encoder.cfg.max_prompt_length == 64
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "data.max_prompt_length (512)" in warning and "data.max_length (128)" in warning
    assert "set data.max_prompt_length=<n> below data.max_length" in warning
    # The prompt "<s><|user|>" + 80 characters + "<|end|><|assistant|>" is 84 tokens: cut to 64.
    (pair,), report = encoder.encode_all([rec(prompt="9" * 80)])
    assert len(pair.prompt) == 64 and report.truncated["prompt"] == 1
    caplog.clear()
    Encoder(tokenizer, TokenizeConfig(max_length=128, max_prompt_length=100))
    assert not caplog.records  # a limit below max_length is kept as it is


def test_files_preset_runs_with_a_smaller_max_length(compose, tmp_path):
    import json

    from prefopt.training.train import build

    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"sort {n}", "chosen": "1", "rejected": "2"})
                            + "\n" for n in range(4)))
    cfg = compose("data=files", f"data.path={path}", f"data.val_path={path}",
                  "data.max_length=128")
    assert cfg.data.max_prompt_length == 512  # the preset's
    _, datamodule, _ = build(cfg)
    datamodule.setup("fit")
    assert datamodule.reports["train"].kept == 4


def test_truncation_is_counted_by_record_field(tokenizer):
    from prefopt.data.records import parse_ranked, parse_unpaired

    # 12 prompt tokens ("<s><|user|>sort 321<|end|><|assistant|>"), max_length 15: room 3.
    ranked = parse_ranked("r.jsonl:1", {"prompt": "sort 321", "completions":
                                        ["1234", "12", "4321"], "ranks": [1, 2, 3]})
    _, report = encode(tokenizer, ranked, max_length=15)  # "1234<|end|>", "4321<|end|>" cut
    assert report.truncated == {"completions": 2}
    unpaired = parse_unpaired("u.jsonl:1", {"prompt": "sort 321", "completion": "1234",
                                            "label": True})
    assert encode(tokenizer, unpaired, max_length=15)[1].truncated == {"completion": 1}
    # A prompt cut to 5 tokens and a chosen completion cut to fit 8: room 3.
    _, report = encode(tokenizer, rec(chosen="1234", rejected="1"), max_length=8,
                       max_prompt_length=5)
    assert report.truncated == {"prompt": 1, "chosen": 1}
    assert "truncated chosen 1 prompt 1" in report.summary()


def test_length_statistics_before_truncation(tokenizer):
    # Prompts "<s><|user|>sort 1...1<|end|><|assistant|>": 9 + n tokens; completions
    # "1"*n + <|end|>: n + 1. n = 1..4 gives prompts 10..13, completions 2..5 (twice each).
    records = [rec(prompt="sort " + "1" * n, chosen="1" * n, rejected="2" * n, where=f"r{n}")
               for n in range(1, 5)]
    groups, report = Encoder(tokenizer, TokenizeConfig(max_length=15)).encode_all(records)
    assert [len(g.prompt) for g in groups] == [10, 11, 12, 13]
    lengths = report.as_dict()["lengths"]
    # Nearest rank: p50 of 4 values is the 2nd, p95 the 4th; of 8 values the 4th and 8th.
    assert lengths["prompt"] == {"mean": 11.5, "p50": 11, "p95": 13, "max": 13}
    assert lengths["completion"] == {"mean": 3.5, "p50": 3, "p95": 5, "max": 5}
    # n = 3 (12 + 4 > 15) and n = 4 (13 + 5 > 15) are cut: lengths are counted before.
    assert report.truncated == {"chosen": 2, "rejected": 2}
    summary = report.summary()
    assert "prompt tokens mean 11.5 p50 11 p95 13 max 13" in summary
    assert "completion tokens mean 3.5 p50 3 p95 5 max 5" in summary


def test_length_stats_nearest_rank():
    from prefopt.data.tokenize import length_stats

    values = list(range(1, 21))  # 1..20: p50 is the 10th value, p95 the 19th
    assert length_stats(values) == {"mean": 10.5, "p50": 10, "p95": 19, "max": 20}
    assert length_stats([7]) == {"mean": 7.0, "p50": 7, "p95": 7, "max": 7}
    assert length_stats([1, 1, 2]) == {"mean": 1.33, "p50": 1, "p95": 2, "max": 2}  # 4/3
    assert length_stats([]) is None


def test_report_dict_shape_and_sources(tokenizer):
    _, report = encode(tokenizer, rec())
    as_dict = report.as_dict()
    assert "sources" not in as_dict  # left to the loader of a mixture
    assert as_dict["prompt_boundary_merges"] == 0
    assert set(as_dict["lengths"]) == {"prompt", "completion"}
    report.sources = [{"path": "a.jsonl", "records": 1}]
    assert report.as_dict()["sources"] == [{"path": "a.jsonl", "records": 1}]


def test_prompt_merging_into_the_completion_is_counted_and_warned(chatml_tokenizer, caplog):
    """Byte-level BPE joins a space to the word after it: the prompt "the sky is " alone
    ends in the token "Ġ", but "the sky is blue." tokenises "...Ġis Ġblue .". The prompt is
    the common prefix (without "Ġ") and the completion starts " blue"."""
    record = rec(prompt="the sky is ", chosen="blue.", rejected="the sea.")
    encoder = Encoder(chatml_tokenizer, TokenizeConfig(chat_template=False))
    (pair,), report = encoder.encode_all([record])
    assert chatml_tokenizer.decode(pair.prompt) == "the sky is"
    assert chatml_tokenizer.decode(pair.chosen) == " blue.<|im_end|>"
    assert chatml_tokenizer.decode(pair.rejected) == " the sea.<|im_end|>"
    assert report.prompt_boundary_merges == 1 and report.as_dict()["prompt_boundary_merges"] == 1
    assert "1 prompts merge into the completion" in report.summary()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("1 of 1 records: the prompt's tokens alone are not a prefix")
    assert "t.jsonl:1: ' '" in warning
    encoder.encode_all([record])
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1  # once
    # Separate tokenisation keeps the prompt whole: "Ġ" then "blue" tokenised alone.
    (pair,), report = Encoder(chatml_tokenizer, TokenizeConfig(
        chat_template=False, completion_tokens="separate")).encode_all([record])
    assert chatml_tokenizer.decode(pair.prompt) == "the sky is "
    assert report.prompt_boundary_merges == 0


@pytest.mark.parametrize("family", ["chatml", "inst"])
def test_generation_prompts_equal_the_joint_prompts(family, request):
    tokenizer = request.getfixturevalue(f"{family}_tokenizer")
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    records = [rec(prompt=question, chosen=[{"role": "assistant", "content": "Thank you."}],
                   rejected=[{"role": "assistant", "content": "No."}]),
               rec(prompt="Sort the numbers 3 2 1.", chosen="1 2 3.", rejected="3 2 1.")]
    encoder = Encoder(tokenizer, TokenizeConfig(max_length=128))
    groups, report = encoder.encode_all(records)
    assert report.prompt_boundary_merges == 0
    assert encoder.prompt_ids([r.prompt for r in records]) == [g.prompt for g in groups]


def test_every_record_kind_splits_the_whole_conversation(inst_tokenizer):
    """Joint tokenisation for unpaired, ranked and attributed records: prompt + each
    completion are the tokens of the whole rendered conversation, so after [/INST] a
    completion starts `Thank`, not `▁Thank` (what the completion alone would give)."""
    from prefopt.data.attributes import AttributeSchema, AttributeSpec
    from prefopt.data.records import parse_attributed, parse_ranked, parse_unpaired

    def whole(text):  # the Mistral template's rendering, tokenised in one piece
        return inst_tokenizer(text, add_special_tokens=False)["input_ids"]

    question = "Why is the sky blue?"
    head = f"<s>[INST] {question} [/INST]"
    cfg = TokenizeConfig(max_length=128)
    schema = AttributeSchema([AttributeSpec("quality", 0, 4)])
    cases = [
        (parse_unpaired("u.jsonl:1", {"prompt": question, "completion": "Thank you.",
                                      "label": True}), Encoder(inst_tokenizer, cfg), ""),
        (parse_ranked("r.jsonl:1", {"prompt": question, "completions":
                                    ["Thank you.", "No.", "the sea."], "ranks": [1, 2, 3]}),
         Encoder(inst_tokenizer, cfg), ""),
        (parse_attributed("a.jsonl:1", {"prompt": question, "response": "Thank you.",
                                        "attributes": {"quality": 4}}),
         Encoder(inst_tokenizer, cfg, schema), "quality:4\n"),
    ]
    for record, encoder, line in cases:
        (group,), report = encoder.encode_all([record])
        assert report.prompt_boundary_merges == 0
        assert group.prompt == whole(head + line)
        for text, ids in zip(record.completions, group.completions):
            assert group.prompt + ids == whole(head + line + text + "</s>")
        assert inst_tokenizer.convert_ids_to_tokens(group.completions[0])[0] != "▁Thank"
    assert group.bare_prompt == whole(head + "\n")  # the attributed record's empty line


# Mistral-style: the template itself refuses what it cannot render (raise_exception).
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('System messages are not supported by this template') }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['content'] == 'boom' %}{{ raise_exception('no boom') }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


@pytest.mark.parametrize("prompt,rejected,field,reason", [
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "no",
     "prompt", "System messages are not supported"),
    ("hi", "boom", "rejected", "no boom"),
])
def test_a_record_the_chat_template_refuses_is_named_with_its_field(tokenizer, prompt,
                                                                     rejected, field, reason):
    """The template raises inside a batch of records: the error names the record and the
    field it could not render, with the template's own words, not a bare jinja error."""
    import copy

    strict = copy.deepcopy(tokenizer)
    strict.chat_template = STRICT_TEMPLATE
    encoder = Encoder(strict, TokenizeConfig())
    if isinstance(prompt, list):
        bad = rec(prompt=prompt, chosen=[{"role": "assistant", "content": "yes"}],
                  rejected=[{"role": "assistant", "content": rejected}], where="d.jsonl:3")
    else:
        bad = rec(prompt=prompt, chosen="yes", rejected=rejected, where="d.jsonl:3")
    good = [rec(where=f"d.jsonl:{i}") for i in (1, 2)]
    with pytest.raises(RecordError) as error:
        encoder.encode_all([*good, bad, rec(where="d.jsonl:4")])
    message = str(error.value)
    assert message.startswith(f"d.jsonl:3: field '{field}': the tokenizer's chat template "
                              "cannot render it (TemplateError: ")
    assert reason in message
    # The good records alone encode as before: one call renders them all.
    kept, _ = encoder.encode_all(good)
    assert [strict.decode(g.chosen) for g in kept] == ["123" + strict.eos_token] * 2


@pytest.mark.parametrize("a,b,n", [([1, 2, 3], [1, 2, 3, 4], 3), ([1, 2, 3], [1, 2], 2),
                                   ([1, 5, 3], [1, 2, 3], 1), ([], [1], 0), ([7], [8], 0),
                                   ([1, 2], [1, 2], 2)])
def test_common_prefix_length(a, b, n):
    from prefopt.data.tokenize import common_prefix_length

    assert common_prefix_length(a, b) == common_prefix_length(b, a) == n


def test_gpt2_style_eos_is_not_counted_as_unknown(gpt2_tokenizer):
    """GPT-2's <|endoftext|> is unknown, BOS and EOS at once. Each plain completion ends in
    it (2 per pair) and the byte-level vocabulary covers "é": by hand, 0 unknown tokens."""
    (pair,), report = encode(gpt2_tokenizer, rec(prompt="trié é", chosen="ü1"),
                             chat_template=False)
    assert pair.chosen[-1] == gpt2_tokenizer.eos_token_id == gpt2_tokenizer.unk_token_id
    assert report.unknown_tokens == 0
    assert report.as_dict()["unknown_characters"] == {}
    assert "unknown" not in report.summary()


def test_a_prompt_without_tokens_is_skipped_counted_and_warned(gpt2_tokenizer, caplog):
    """GPT-2 adds no BOS and has no chat template: an empty prompt has no tokens, and nothing
    would predict the completion's first token. By hand: 1 of 3 records skipped."""
    records = [rec(prompt="Thank you", where="t.jsonl:1"), rec(prompt="", where="t.jsonl:2"),
               rec(prompt="sort 321", where="t.jsonl:3")]
    with caplog.at_level("WARNING", logger="prefopt.data.tokenize"):
        groups, report = Encoder(gpt2_tokenizer, TokenizeConfig(chat_template=False)
                                 ).encode_all(records)
    assert len(groups) == report.kept == 2 and all(g.prompt for g in groups)
    assert report.as_dict()["skipped"] == {"prompt without tokens": 1}
    assert "skipped 1 (prompt without tokens)" in report.summary()
    assert len(report.prompt_lengths) == 2  # lengths of the records that were tokenised
    assert "(first: t.jsonl:2)" in caplog.text and "BOS" in caplog.text
    assert "chat template" in caplog.text


def test_an_empty_prompt_in_a_chat_template_is_kept(tokenizer):
    """The template renders the empty user turn around it: the prompt has tokens and the
    record trains."""
    (pair,), report = encode(tokenizer, rec(prompt=""))
    assert tokenizer.decode(pair.prompt) == "<s><|user|><|end|><|assistant|>"
    assert report.skipped == {}


def test_no_chat_template_error_gives_the_fix_for_the_record_kind(gpt2_tokenizer):
    """data.chat_template=false is the fix for string records only: message lists need a
    template whatever that setting says."""
    messages = rec(prompt=[{"role": "user", "content": "hi"}],
                   chosen=[{"role": "assistant", "content": "yo"}],
                   rejected=[{"role": "assistant", "content": "no"}])
    with pytest.raises(RecordError) as error:
        encode(gpt2_tokenizer, messages, chat_template=False)
    assert "message lists need a chat template" in str(error.value)
    assert "plain strings" in str(error.value)
    assert "data.chat_template=false" not in str(error.value)
    with pytest.raises(RecordError, match="set data.chat_template=false for plain-string"):
        encode(gpt2_tokenizer, rec())
