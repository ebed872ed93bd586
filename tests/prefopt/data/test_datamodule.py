"""Splits and the attribute schema of a run's data (records and batches of each format:
test_records.py, test_formats.py, test_attributed.py)."""

import json

import pytest

from prefopt.data.datamodule import DataConfig, attribute_schema, load_splits
from prefopt.data.records import RecordError
from prefopt.data.synthetic import SyntheticConfig


def _pairs(path, n):
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"})
                            + "\n" for i in range(n)))
    return str(path)


def prompts(records):
    return {r.prompt for r in records}


def test_a_held_out_fraction_is_seeded_and_disjoint(tmp_path):
    cfg = DataConfig(path=_pairs(tmp_path / "pairs.jsonl", 20), val_fraction=0.25)
    splits = load_splits(cfg, "pairwise", seed=0)
    assert (len(splits["train"]), len(splits["val"])) == (15, 5)  # round(0.25 * 20)
    assert not prompts(splits["train"]) & prompts(splits["val"])
    again = load_splits(cfg, "pairwise", seed=0)
    assert prompts(again["val"]) == prompts(splits["val"])
    assert prompts(load_splits(cfg, "pairwise", seed=1)["val"]) != prompts(splits["val"])


def test_a_bad_fraction_and_unpairing_for_the_wrong_format_are_refused(tmp_path):
    path = _pairs(tmp_path / "pairs.jsonl", 4)
    with pytest.raises(ValueError, match=r"data.val_fraction must be in \(0, 1\), got 1.0"):
        load_splits(DataConfig(path=path, val_fraction=1.0), "pairwise", seed=0)
    with pytest.raises(ValueError, match="data.unpair=true turns pairwise records into "
                                         "unpaired ones, but the objective consumes ranked"):
        load_splits(DataConfig(path=path, unpair=True), "ranked", seed=0)


def test_unpairing_makes_two_examples_per_pair(tmp_path):
    cfg = DataConfig(path=_pairs(tmp_path / "pairs.jsonl", 10), unpair=True, val_fraction=0.2)
    splits = load_splits(cfg, "unpaired", seed=0)
    assert (len(splits["train"]), len(splits["val"])) == (16, 4)


def test_the_attribute_schema_comes_from_the_config_or_the_synthetic_task(tmp_path):
    given = DataConfig(attributes=[{"name": "helpfulness", "min": 0, "max": 9}])
    assert attribute_schema(given).names == ("helpfulness",)
    assert attribute_schema(DataConfig(synthetic=SyntheticConfig())).names == (
        "quality", "order", "length")
    with pytest.raises(ValueError, match="data.attributes: attributed records from .* need "
                                         "an attribute schema"):
        attribute_schema(DataConfig(path=str(tmp_path / "records.jsonl")))


def test_an_empty_file_is_refused_naming_it(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match=rf"^{empty}: holds no records: give a file with "
                                          r"pairwise records \{prompt, chosen, rejected\}"):
        load_splits(DataConfig(path=str(empty)), "pairwise", seed=0)
    good = _pairs(tmp_path / "pairs.jsonl", 4)
    with pytest.raises(RecordError, match=rf"^{empty}: holds no records"):
        load_splits(DataConfig(path=good, val_path=str(empty)), "pairwise", seed=0)


def test_one_record_cannot_give_both_splits(tmp_path):
    path = _pairs(tmp_path / "one.jsonl", 1)
    with pytest.raises(RecordError, match=rf"^{path}: holds 1 record, and holding out "
                                          r"validation .* give validation records in "
                                          r"data.val_path=<file>"):
        load_splits(DataConfig(path=path), "pairwise", seed=0)


def test_no_usable_record_names_the_file_and_the_rules(tmp_path):
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.models import ModelConfig, build_tokenizer

    path = tmp_path / "blank.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "", "rejected": "b"})
                            + "\n" for i in range(4)))
    cfg = DataConfig(path=str(path), on_empty_completion="skip")
    module = PreferenceDataModule(cfg, build_tokenizer(ModelConfig()))
    with pytest.raises(RecordError, match=rf"^{path}: too few usable train records \(0/3 "
                                          r"records kept.*\): add records, or relax the "
                                          r"data.on_\* rules"):
        module.setup("fit")


def test_records_of_another_format_name_both_formats(tmp_path):
    unpaired = tmp_path / "unpaired.jsonl"
    unpaired.write_text(json.dumps({"prompt": "p", "completion": "a", "label": True}) + "\n")
    with pytest.raises(RecordError, match=rf"^{unpaired}:1: the objective consumes pairwise "
                                          r"records \{prompt, chosen, rejected\}, but this is "
                                          r"an unpaired record \{prompt, completion, label\}: "
                                          r"convert the data .* consumes unpaired records"):
        load_splits(DataConfig(path=str(unpaired)), "pairwise", seed=0)
    pairs = _pairs(tmp_path / "pairs.jsonl", 4)
    with pytest.raises(RecordError, match=rf"^{pairs}:1: the objective consumes unpaired "
                                          r"records .* but this is a pairwise record .*: set "
                                          r"data.unpair=true"):
        load_splits(DataConfig(path=pairs), "unpaired", seed=0)
    # A record of the right format with a missing field keeps its own message.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(RecordError, match=r":1: field 'rejected': missing$"):
        load_splits(DataConfig(path=str(broken)), "pairwise", seed=0)
