"""Attributed records (SteerLM): reading, the serialised prompt, response-only masking."""

import json

import pytest
import torch

from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.data.collate import collate_groups
from prefopt.data.records import RecordError, parse_attributed, read_records
from prefopt.data.tokenize import Encoder, TokenizeConfig

SCHEMA = AttributeSchema([AttributeSpec("quality", 0, 4), AttributeSpec("order", 0, 1),
                          AttributeSpec("length", 1, 6),
                          AttributeSpec("note", 0, 9, steerable=False)])


def record(attributes=None, response="87", where="a.jsonl:1"):
    attributes = {"quality": 4, "order": 1, "length": 2, "note": 7} \
        if attributes is None else attributes
    return parse_attributed(where, {"prompt": "pick 827", "response": response,
                                    "attributes": attributes})


def ids(tokenizer, tokens):
    """Token ids by hand: the tiny tokenizer has one token per character or special."""
    out = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in out, "a character the tiny vocabulary lacks"
    return out


def test_prompt_ends_in_the_attribute_line_exact_tokens(tokenizer):
    (group,), _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all([record()])
    line = list("quality:4,order:1,length:2") + ["\n"]  # `note` does not steer: not written
    assert group.prompt == ids(tokenizer, ["<s>", "<|user|>", *"pick 827", "<|end|>",
                                           "<|assistant|>", *line])
    assert group.completions == (ids(tokenizer, ["8", "7", "<|end|>"]),)
    # The unconditioned form: the same turn with an empty attribute line.
    assert group.bare_prompt == ids(tokenizer, ["<s>", "<|user|>", *"pick 827", "<|end|>",
                                                "<|assistant|>", "\n"])
    assert group.attributes == (4.0, 1.0, 2.0, 7.0)


def test_missing_values_are_left_out_and_kept_as_nan(tokenizer):
    (group,), _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all(
        [record({"quality": 3, "order": None})])
    assert tokenizer.decode(group.prompt).endswith("<|assistant|>quality:3\n")
    assert group.attributes[0] == 3.0
    assert all(v != v for v in group.attributes[1:])  # NaN: not given


def test_the_attribute_model_reads_no_attribute_line(tokenizer):
    (group,), _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA, condition=False).encode_all(
        [record()])
    assert tokenizer.decode(group.prompt) == "<s><|user|>pick 827<|end|><|assistant|>"
    assert group.bare_prompt is None and group.attributes == (4.0, 1.0, 2.0, 7.0)


def test_only_response_tokens_are_in_the_completion_mask(tokenizer):
    (group,), _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all([record()])
    batch = collate_groups([group], tokenizer.pad_token_id)
    masked = batch["input_ids"][0][batch["completion_mask"][0]]
    assert masked.tolist() == ids(tokenizer, ["8", "7", "<|end|>"])
    assert torch.equal(batch["attributes"], torch.tensor([[4.0, 1.0, 2.0, 7.0]]))


def test_values_outside_the_schema_name_the_record_and_attribute(tokenizer):
    bad = record({"quality": 4, "length": 9}, where="train.jsonl:31")
    with pytest.raises(RecordError) as caught:
        Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all([record(), bad])
    assert str(caught.value) == ("train.jsonl:31: field 'attributes.length': 9 is outside "
                                 "the schema's range [1, 6]")
    with pytest.raises(RecordError, match="field 'attributes.colour': unknown attribute"):
        Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all([record({"colour": 1})])


@pytest.mark.parametrize("raw, field, message", [
    ({"prompt": "p", "response": "r"}, "attributes", "missing"),
    ({"prompt": "p", "attributes": {}}, "response", "missing"),
    ({"prompt": "p", "response": "r", "attributes": [1, 2]}, "attributes", "expected an object"),
    ({"prompt": "p", "response": "r", "attributes": {"q": "high"}}, "attributes.q",
     "expected a number or null"),
])
def test_malformed_records_are_named_by_line_and_field(tmp_path, raw, field, message):
    path = tmp_path / "train.jsonl"
    good = {"prompt": "p", "response": "r", "attributes": {"q": 1}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(raw) + "\n")
    with pytest.raises(RecordError, match=message) as caught:
        read_records(str(path), "attributed")
    assert caught.value.where == f"{path}:2" and caught.value.field == field


def test_steered_generation_prompts_equal_training_prompts(tokenizer):
    encoder = Encoder(tokenizer, TokenizeConfig(), SCHEMA)
    (group,), _ = encoder.encode_all([record()])
    asked = encoder.prompt_ids(["pick 827", "pick 827"],
                               [{"quality": 4, "order": 1, "length": 2}, {}])
    assert asked == [group.prompt, group.bare_prompt]


def test_attribute_dropout_is_drawn_per_epoch_and_reproducible(tokenizer):
    from prefopt.data.datamodule import AttributeDropout
    from prefopt.data.sampler import ResumableSampler

    records = [record(where=f"r{i}") for i in range(400)]
    groups, _ = Encoder(tokenizer, TokenizeConfig(), SCHEMA).encode_all(records)
    sampler = ResumableSampler(len(groups), seed=3)
    dataset = AttributeDropout(groups, 0.25, seed=3, sampler=sampler)

    def dropped():
        return [dataset[i].prompt == groups[i].bare_prompt for i in range(len(groups))]

    first = dropped()
    assert 0.18 < sum(first) / len(first) < 0.32
    assert dropped() == first  # the same epoch: the same draw (a resumed run sees it too)
    sampler.set_epoch(1)
    assert dropped() != first  # a new epoch: a new draw
    with pytest.raises(ValueError, match=r"attribute_dropout must be in \[0, 1\)"):
        AttributeDropout(groups, 1.0, seed=3, sampler=sampler)


def test_own_attributed_data_needs_a_schema(tmp_path):
    from prefopt.data.datamodule import DataConfig, attribute_schema

    with pytest.raises(ValueError, match="data.attributes: attributed records from .* need"):
        attribute_schema(DataConfig(path=str(tmp_path / "x.jsonl")))
    given = attribute_schema(DataConfig(path="x.jsonl", attributes=[AttributeSpec("q", 0, 9)]))
    assert given.names == ("q",)
    assert attribute_schema(DataConfig()).names == ("quality", "order", "length")
