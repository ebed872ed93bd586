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
    # JSON arrays count from 1, like JSONL lines: the second record is record 2.
    with pytest.raises(RecordError, match=r"d.json record 2: field 'chosen': missing"):
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


def test_a_saved_dataset_without_the_split_names_its_splits_and_the_setting(tmp_path):
    import datasets

    from prefopt.data.records import read_records

    path = tmp_path / "ds"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list([GOOD] * 2),
                          "test_prefs": datasets.Dataset.from_list([GOOD])}).save_to_disk(path)
    with pytest.raises(RecordError) as err:
        read_pairwise(str(path))
    assert str(err.value) == (f"{path}: has no split 'train' (its splits: train_prefs, "
                              "test_prefs): choose one with data.split=<name> (validation "
                              "records: data.val_split=<name>)")
    with pytest.raises(RecordError) as err:
        read_records(str(path), "pairwise", "validation", split_setting="data.val_split")
    assert str(err.value).endswith("choose one with data.val_split=<name>")
    assert len(read_pairwise(str(path), "train_prefs")) == 2


def test_a_dataset_folder_without_the_split_names_its_splits(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [GOOD, GOOD, GOOD])  # datasets: the split "test"
    with pytest.raises(RecordError) as err:
        read_pairwise(str(folder))
    assert str(err.value) == (f"{folder}: has no split 'train' (its splits: test): choose "
                              "one with data.split=<name> (validation records: "
                              "data.val_split=<name>)")
    assert len(read_pairwise(str(folder), "test[:2]")) == 2  # slices still work


def test_columns_map_fields_to_the_sources_names(tmp_path):
    from prefopt.data.records import read_records

    rows = [{"question": "sort 21", "response_a": "12", "response_b": "21", "chosen": "x"}]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    columns = {"prompt": "question", "chosen": "response_a", "rejected": "response_b"}
    (rec,) = read_records(str(path), "pairwise", columns=columns)
    # The mapped column wins over the source's own "chosen".
    assert (rec.prompt, rec.chosen, rec.rejected) == ("sort 21", "12", "21")


def test_columns_apply_to_datasets_too(tmp_path):
    import datasets

    from prefopt.data.records import Columns, read_records

    rows = [{"q": "sort 21", "good": "12", "bad": "21"}]
    datasets.Dataset.from_list(rows).save_to_disk(tmp_path / "ds")
    columns = Columns(prompt="q", chosen="good", rejected="bad")
    (rec,) = read_records(str(tmp_path / "ds"), "pairwise", columns=columns)
    assert (rec.prompt, rec.chosen, rec.rejected) == ("sort 21", "12", "21")


def test_a_mapped_column_missing_names_field_and_column(tmp_path):
    from prefopt.data.records import read_records

    path = write_jsonl(tmp_path / "renamed.jsonl", [
        {"prompt": "p", "response_a": "a", "rejected": "b"}, {"prompt": "p", "rejected": "b"}])
    with pytest.raises(RecordError) as err:
        read_records(str(path), "pairwise", columns={"chosen": "response_a"})
    assert str(err.value) == f"{path}:2: field 'chosen' (column 'response_a'): missing"


def test_an_unknown_column_field_is_refused_with_the_valid_ones(tmp_path):
    from prefopt.data.records import read_records

    path = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    with pytest.raises(RecordError) as err:
        read_records(str(path), "pairwise", columns={"completion": "answer"})
    assert str(err.value) == ("data.columns: field 'completion': pairwise records have no "
                              "such field; map one of prompt, chosen, rejected, margin: "
                              "data.columns.<field>=<column>")


def test_the_columns_node_has_every_formats_fields():
    import dataclasses

    from prefopt.data.records import FIELDS, Columns

    every = {f for fields in FIELDS.values() for f in fields}
    assert {f.name for f in dataclasses.fields(Columns)} == every


def test_a_split_of_a_saved_dataset_without_splits_is_refused(tmp_path):
    import datasets

    from prefopt.data.records import read_records

    path = tmp_path / "one"
    datasets.Dataset.from_list([GOOD] * 2).save_to_disk(path)
    assert len(read_pairwise(str(path))) == 2
    with pytest.raises(RecordError) as err:
        read_records(str(path), "pairwise", "test", split_setting="data.val_split")
    assert str(err.value) == (f"{path}: is one dataset without splits (save_to_disk of a "
                              "Dataset), so data.val_split=test picks nothing: remove "
                              "data.val_split; validation records come from data.val_path "
                              "or data.val_fraction")


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"prompt": "a", "chosen": "b", "rejected": "c"},\n  {"prompt": }\n]')
    # By hand: line 3 is `  {"prompt": }`; the value expected at "}" is character 14.
    with pytest.raises(RecordError) as err:
        read_pairwise(str(path))
    assert str(err.value) == f"{path}:3: not valid JSON (Expecting value at column 14)"


def test_json_lines_in_a_json_file_are_told_to_be_renamed(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(RecordError) as err:
        read_pairwise(str(path))
    assert str(err.value) == (f"{path}:2: not valid JSON (Extra data at column 1); it holds "
                              f"one record per line (JSON Lines): rename it to "
                              f"{tmp_path / 'pairs.jsonl'}")
