"""Records whose completions are whole conversations: TRL's implicit prompt (no `prompt`
field) and the UltraFeedback-binarized shape (a string prompt the conversations repeat)."""

import json

import pytest

from prefopt.data.records import RecordError, read_records


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def read(tmp_path, records, fmt="pairwise"):
    return read_records(write_jsonl(tmp_path / "data.jsonl", records), fmt)


def test_the_shared_first_messages_are_the_implicit_prompt(tmp_path):
    system = {"role": "system", "content": "be brief"}
    record = {"chosen": [system, user("sort 21"), assistant("12"), user("again"),
                         assistant("12")],
              "rejected": [system, user("sort 21"), assistant("12"), user("again"),
                           assistant("21")]}
    (rec,) = read(tmp_path, [record])
    # By hand: the first four messages are equal, the fifth differs.
    assert rec.prompt == [system, user("sort 21"), assistant("12"), user("again")]
    assert rec.chosen == [assistant("12")]
    assert rec.rejected == [assistant("21")]
    assert rec.conversational


def test_the_implicit_prompt_keeps_every_completion_message(tmp_path):
    record = {"chosen": [user("q"), assistant("a"), user("more?"), assistant("b")],
              "rejected": [user("q"), assistant("x")]}
    (rec,) = read(tmp_path, [record])
    assert rec.prompt == [user("q")]
    assert rec.chosen == [assistant("a"), user("more?"), assistant("b")]
    assert rec.rejected == [assistant("x")]


@pytest.mark.parametrize("chosen, rejected, field, message", [
    ([user("q"), assistant("a")], [user("other"), assistant("b")], "rejected",
     "has no 'prompt' field, so the prompt is the messages that chosen and rejected start "
     "with, but its first message differs from chosen's: give a 'prompt' field"),
    ([user("q"), assistant("a")], [user("q"), assistant("a"), user("more")], "chosen",
     "holds no message after the prompt's 2, so its completion would be empty"),
    ([user("q"), assistant("a"), user("x")], [user("q"), assistant("a"), user("y")],
     "chosen", "message 2, the first after the prompt, is a user message; a completion "
               "starts with an assistant message"),
])
def test_an_implicit_prompt_that_cannot_be_told_is_refused(tmp_path, chosen, rejected, field,
                                                           message):
    good = {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    path = write_jsonl(tmp_path / "trl.jsonl", [good, {"chosen": chosen, "rejected": rejected}])
    with pytest.raises(RecordError) as err:
        read_records(path, "pairwise")
    assert str(err.value) == f"{path}:2: field '{field}': {message}"


def test_string_completions_without_a_prompt_still_miss_it(tmp_path):
    with pytest.raises(RecordError, match=r":1: field 'prompt': missing; "):
        read(tmp_path, [{"chosen": "a", "rejected": "b"}])


def test_ultrafeedback_drops_the_repeated_prompt_turn(tmp_path):
    record = {"prompt": "sort 21", "chosen": [user("sort 21"), assistant("12")],
              "rejected": [user("sort 21"), assistant("21")], "score_chosen": 8.0}
    (rec,) = read(tmp_path, [record])
    assert rec.prompt == [user("sort 21")]
    assert rec.chosen == [assistant("12")] and rec.rejected == [assistant("21")]


@pytest.mark.parametrize("conversation, said", [
    ([user("sort 12"), assistant("12")], "user 'sort 12'"),
    ([{"role": "system", "content": "hi"}, user("sort 21"), assistant("12")], "system 'hi'"),
])
def test_a_conversation_not_opening_with_the_string_prompt_is_refused(tmp_path, conversation,
                                                                      said):
    record = {"prompt": "sort 21", "chosen": [user("sort 21"), assistant("12")],
              "rejected": conversation}
    path = write_jsonl(tmp_path / "uf.jsonl", [record])
    with pytest.raises(RecordError) as err:
        read_records(path, "pairwise")
    assert str(err.value) == (
        f"{path}:1: field 'rejected': is a conversation under a string 'prompt', so it must "
        f"open with that prompt as a user message, but message 0 is {said}, the prompt "
        "'sort 21': give the prompt as messages, or the completions as strings")


def test_an_ultrafeedback_conversation_with_only_the_prompt_is_refused(tmp_path):
    record = {"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [user("q")]}
    with pytest.raises(RecordError, match=r":1: field 'rejected': holds no message after the "
                                          r"prompt's 1, so its completion would be empty"):
        read(tmp_path, [record])


def test_the_other_formats_take_the_ultrafeedback_shape_too(tmp_path):
    unpaired = {"prompt": "q", "completion": [user("q"), assistant("a")], "label": True}
    (rec,) = read(tmp_path, [unpaired], "unpaired")
    assert (rec.prompt, rec.completions) == ([user("q")], ([assistant("a")],))
    ranked = {"prompt": "q", "completions": [[user("q"), assistant("a")],
                                             [user("q"), assistant("b")]], "ranks": [1, 0]}
    (rec,) = read(tmp_path, [ranked], "ranked")
    assert (rec.prompt, rec.completions) == ([user("q")], ([assistant("a")], [assistant("b")]))
    attributed = {"prompt": "q", "response": [user("q"), assistant("a")],
                  "attributes": {"quality": 3}}
    (rec,) = read(tmp_path, [attributed], "attributed")
    assert (rec.prompt, rec.completions) == ([user("q")], ([assistant("a")],))


def test_a_ranking_of_conversations_may_leave_out_its_prompt(tmp_path):
    record = {"completions": [[user("q"), assistant("a")], [user("q"), assistant("b")],
                              [user("q"), assistant("c")]], "ranks": [0, 2, 1]}
    (rec,) = read(tmp_path, [record], "ranked")
    assert rec.prompt == [user("q")]
    assert rec.completions == ([assistant("a")], [assistant("b")], [assistant("c")])
    assert rec.ranks == (0, 2, 1)


def test_an_unpaired_conversation_without_a_prompt_is_refused(tmp_path):
    record = {"completion": [user("q"), assistant("a")], "label": True}
    with pytest.raises(RecordError, match=r":1: field 'prompt': missing: an unpaired record's "
                                          r"prompt cannot be told apart from one conversation"):
        read(tmp_path, [record], "unpaired")


def test_implicit_prompt_records_tokenise_like_explicit_ones(tokenizer, tmp_path):
    from prefopt.data.tokenize import Encoder, TokenizeConfig

    implicit = {"chosen": [user("sort 21"), assistant("12")],
                "rejected": [user("sort 21"), assistant("21")]}
    explicit = {"prompt": [user("sort 21")], "chosen": [assistant("12")],
                "rejected": [assistant("21")]}
    uf = {"prompt": "sort 21", **{k: implicit[k] for k in ("chosen", "rejected")}}
    records = read(tmp_path, [implicit, explicit, uf])
    groups, report = Encoder(tokenizer, TokenizeConfig()).encode_all(records)
    assert report.kept == 3
    assert groups[0] == groups[1] == groups[2]


def test_anthropic_hh_strings_split_at_the_last_shared_assistant_turn(tmp_path):
    """By hand: both strings share everything up to "\n\nAssistant: Blu"; the prompt ends at
    the marker, so the shared "Blu" stays in each answer."""
    asked = "\n\nHuman: What colour is the sky?\n\nAssistant:"
    again = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and the sky?\n\nAssistant:"
    (first, second) = read(tmp_path, [{"chosen": asked + " Blue.", "rejected": asked + " Blurple."},
                                      {"chosen": again + " Blue.", "rejected": again + " No."}])
    assert first.prompt == asked
    assert first.completions == (" Blue.", " Blurple.")
    assert second.prompt == again  # every shared turn, the last assistant marker included
    assert second.completions == (" Blue.", " No.")


def test_strings_without_prompt_or_turn_marker_say_how_to_give_the_prompt(tmp_path):
    with pytest.raises(RecordError) as err:
        read(tmp_path, [{"chosen": "sort 21: 12", "rejected": "sort 21: 21"}])
    assert err.value.field == "prompt"
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'data.jsonl'}:1: field 'prompt': missing; ")
    assert "message lists" in message and "\\n\\nAssistant:" in message
    assert "give the shared start of chosen and rejected in 'prompt'" in message
