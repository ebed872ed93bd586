"""Reading pairwise records: every supported source, and errors naming file, line, field."""

import json

import pytest

from prefopt.data.records import RecordError, read_pairwise

GOOD = {"prompt": "sort 321", "chosen": "123", "rejected": "132"}


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_jsonl_line_7_missing_rejected(tmp_path):
    records = [GOOD] * 6 + [{"prompt": "sort 21", "chosen": "12"}] + [GOOD] * 3
    path = write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(RecordError) as err:
        read_pairwise(str(path))
    assert str(err.value) == f"{path}:7: field 'rejected': missing"
    assert err.value.field == "rejected"


def test_malformed_line_is_an_error_not_a_skip(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "x", "chosen": \n' + json.dumps(GOOD))
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON"):
        read_pairwise(str(path))


def test_blank_lines_keep_line_numbers_true(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({"prompt": 3, "chosen": "a",
                                                            "rejected": "b"}) + "\n")
    with pytest.raises(RecordError, match=rf"{path}:3: field 'prompt': expected a string"):
        read_pairwise(str(path))


def test_jsonl_reads_in_order_with_locations(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {**GOOD, "chosen": "x"}])
    records = read_pairwise(str(path))
    assert [r.chosen for r in records] == ["123", "x"]
    assert records[1].where == f"{path}:2"


def test_chat_messages(tmp_path):
    record = {"prompt": [{"role": "user", "content": "sort 21"}],
              "chosen": [{"role": "assistant", "content": "12"}],
              "rejected": [{"role": "assistant", "content": "21"}]}
    (rec,) = read_pairwise(str(write_jsonl(tmp_path / "c.jsonl", [record])))
    assert rec.conversational and rec.chosen[0]["content"] == "12"


def test_message_without_content_names_field(tmp_path):
    record = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant"}],
              "rejected": [{"role": "assistant", "content": "x"}]}
    with pytest.raises(RecordError, match=r":1: field 'chosen': message 0 lacks a string "
                                          r"'content'"):
        read_pairwise(str(write_jsonl(tmp_path / "c.jsonl", [record])))


def test_mixed_forms_are_refused(tmp_path):
    record = {"prompt": "hi", "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": "b"}
    with pytest.raises(RecordError, match=r"field 'chosen': mixes plain strings"):
        read_pairwise(str(write_jsonl(tmp_path / "c.jsonl", [record])))


def test_parquet_and_json_name_the_record(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD, {"prompt": "a", "chosen": None, "rejected": "c"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(RecordError, match=r"d.parquet record 1: field 'chosen': missing"):
        read_pairwise(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps([GOOD, {"prompt": "a"}]))
    with pytest.raises(RecordError, match=r"d.json record 1: field 'chosen': missing"):
        read_pairwise(str(tmp_path / "d.json"))


def test_parquet_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([GOOD, GOOD]), tmp_path / "ok.parquet")
    assert [r.rejected for r in read_pairwise(str(tmp_path / "ok.parquet"))] == ["132", "132"]


def test_datasets_saved_to_disk(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD] * 3),
                          "test": datasets.Dataset.from_list([GOOD])}).save_to_disk(tmp_path / "ds")
    assert len(read_pairwise(str(tmp_path / "ds"), "train")) == 3
    assert len(read_pairwise(str(tmp_path / "ds"), "test")) == 1


def test_unknown_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(RecordError, match="unknown file type"):
        read_pairwise(str(tmp_path / "x.csv"))


@pytest.mark.parametrize("field", ["prompt", "rejected"])
def test_a_message_role_outside_the_chat_roles_is_refused(tmp_path, field):
    record = {"prompt": [{"role": "user", "content": "hi"}],
              "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": "b"}]}
    record[field] = [{"role": "system", "content": "be brief"}, {"role": "human", "content": "x"}]
    path = write_jsonl(tmp_path / "roles.jsonl", [GOOD, record])
    with pytest.raises(RecordError, match=rf"^{path}:2: field '{field}': message 1 has role "
                                          r"'human'; a role is one of system, user, "
                                          r"assistant, tool$"):
        read_pairwise(str(path))
