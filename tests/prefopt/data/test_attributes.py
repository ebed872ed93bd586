"""The attribute schema: checks that name record and attribute, serialisation, scaling."""

import pytest

from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.data.records import RecordError


@pytest.fixture
def schema():
    return AttributeSchema([AttributeSpec("quality", 0, 4),
                            AttributeSpec("order", 0, 1),
                            AttributeSpec("length", 1, 6),
                            AttributeSpec("toxicity", 0.0, 1.0, integer=False, steerable=False)])


def test_serialise_writes_steerable_values_in_schema_order(schema):
    values = {"length": 3.0, "toxicity": 0.2, "quality": 4.0, "order": 1.0}
    assert schema.serialise(values) == "quality:4,order:1,length:3"
    assert schema.serialise({"length": 2.0}) == "length:2"  # absent ones are left out
    assert schema.serialise({}) == ""


def test_parse_inverts_serialise_and_reads_the_command_line_form(schema):
    assert schema.parse("quality:4,order:1,length:3") == {"quality": 4, "order": 1, "length": 3}
    assert schema.parse("order=0, length=2") == {"order": 0, "length": 2}


@pytest.mark.parametrize("values, field, message", [
    ({"colour": 1}, "attributes.colour", "unknown attribute 'colour'"),
    ({"quality": 5}, "attributes.quality", r"outside the schema's range \[0, 4\]"),
    ({"length": 0}, "attributes.length", r"outside the schema's range \[1, 6\]"),
    ({"quality": 2.5}, "attributes.quality", "expected a whole number"),
    ({"order": True}, "attributes.order", "expected a number"),
    ({"order": "1"}, "attributes.order", "expected a number"),
    ({"toxicity": float("nan")}, "attributes.toxicity", "expected a number"),
])
def test_values_outside_the_schema_name_record_and_attribute(schema, values, field, message):
    with pytest.raises(RecordError, match=message) as caught:
        schema.check(values, "data.jsonl:12")
    assert caught.value.where == "data.jsonl:12" and caught.value.field == field
    assert str(caught.value).startswith(f"data.jsonl:12: field '{field}': ")


def test_non_whole_values_are_fine_for_continuous_attributes(schema):
    assert schema.check({"toxicity": 0.25, "order": None}, "r") == {"toxicity": 0.25}


def test_requests_refuse_attributes_that_do_not_steer(schema):
    assert schema.check_request({"quality": 4}) == {"quality": 4.0}
    with pytest.raises(RecordError, match="'toxicity' is not steerable"):
        schema.check_request({"toxicity": 0.0})


def test_normalise_maps_the_range_to_the_unit_interval(schema):
    assert schema.normalise("length", 1) == 0.0
    assert schema.normalise("length", 6) == 1.0
    assert schema.normalise("quality", 3) == 0.75
    # Back to units: clipped to the range, rounded for whole-number attributes.
    assert schema.denormalise("quality", 0.74) == 3.0  # 2.96 -> 3
    assert schema.denormalise("length", 1.3) == 6.0
    assert schema.denormalise("toxicity", 0.3) == pytest.approx(0.3)


@pytest.mark.parametrize("specs, message", [
    ([], "names no attribute"),
    ([AttributeSpec("a"), AttributeSpec("a")], "listed twice"),
    ([AttributeSpec("a", 2, 2)], "min < max"),
    ([AttributeSpec("a b")], "must be a non-empty word"),
])
def test_bad_schemas_are_refused(specs, message):
    with pytest.raises(ValueError, match=message):
        AttributeSchema(specs)


def test_saved_schema_loads_back(schema, tmp_path):
    schema.save(tmp_path)
    assert AttributeSchema.load(tmp_path) == schema
    with pytest.raises(FileNotFoundError, match="attributes.json not found"):
        AttributeSchema.load(tmp_path / "elsewhere")
