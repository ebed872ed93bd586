"""Where records come from: `data.path` or a weighted mixture `data.mix`, with column
mappings, splits and validation records (prefopt.data.sources)."""

import json
from collections import Counter

import pytest

from prefopt.data.datamodule import DataConfig, load_sources, load_splits
from prefopt.data.records import RecordError
from prefopt.data.sources import SourceConfig


def pairs(path, n, name=None):
    """n pairwise records whose prompts name their file and index: `a 3`."""
    name = name or path.stem
    path.write_text("".join(json.dumps({"prompt": f"{name} {i}", "chosen": "x", "rejected": "y"})
                            + "\n" for i in range(n)))
    return str(path)


def names(records):
    return [r.prompt.split()[0] for r in records]


def test_weights_take_a_seeded_share_and_repeat_above_one(tmp_path):
    a, b = pairs(tmp_path / "a.jsonl", 20), pairs(tmp_path / "b.jsonl", 10)
    val = pairs(tmp_path / "val.jsonl", 3)
    cfg = DataConfig(mix=[SourceConfig(path=a, weight=0.25), SourceConfig(path=b, weight=2.3)],
                     val_path=val)
    train = load_splits(cfg, "pairwise", seed=0)["train"]
    # a: round(0.25 * 20) = 5; b: 2 * 10 + round(0.3 * 10) = 23.
    assert names(train).count("a") == 5 and names(train).count("b") == 23
    from_a = {r.prompt for r in train if r.prompt.startswith("a")}
    assert len(from_a) == 5  # a share, not repeats
    from_b = Counter(r.prompt for r in train if r.prompt.startswith("b"))
    assert set(from_b) == {f"b {i}" for i in range(10)}  # every one twice, 3 of them thrice
    assert sorted(from_b.values()) == [2] * 7 + [3] * 3
    again = load_splits(cfg, "pairwise", seed=0)["train"]
    assert [r.prompt for r in again] == [r.prompt for r in train]
    other = load_splits(cfg, "pairwise", seed=1)["train"]
    assert {r.prompt for r in other if r.prompt.startswith("a")} != from_a


def test_each_source_holds_out_its_own_validation_records(tmp_path):
    a, b = pairs(tmp_path / "a.jsonl", 20), pairs(tmp_path / "b.jsonl", 40)
    cfg = DataConfig(mix=[{"path": a, "weight": 0.5}, {"path": b, "weight": 1.0}],
                     val_fraction=0.1)
    loaded = load_sources(cfg, "pairwise", seed=0)
    train, val = loaded.splits["train"], loaded.splits["val"]
    # a: 2 held out, round(0.5 * 18) = 9 used; b: 4 held out, 36 used.
    assert names(val).count("a") == 2 and names(val).count("b") == 4
    assert names(train).count("a") == 9 and names(train).count("b") == 36
    assert not {r.prompt for r in train} & {r.prompt for r in val}
    assert loaded.sources["train"] == [
        {"path": a, "split": "train", "weight": 0.5, "records_read": 20, "held_out": 2,
         "records_used": 9},
        {"path": b, "split": "train", "weight": 1.0, "records_read": 40, "held_out": 4,
         "records_used": 36}]
    assert loaded.sources["val"] == [
        {"path": a, "split": "train", "records_read": 20, "held_out": 2, "records_used": 2},
        {"path": b, "split": "train", "records_read": 40, "held_out": 4, "records_used": 4}]


def test_a_single_path_splits_as_before(tmp_path):
    """One source of weight 1: the same held-out records as a seeded shuffle gives."""
    import random

    path = pairs(tmp_path / "p.jsonl", 20)
    splits = load_splits(DataConfig(path=path, val_fraction=0.25), "pairwise", seed=3)
    order = list(range(20))
    random.Random(3).shuffle(order)
    assert [r.prompt for r in splits["val"]] == [f"p {i}" for i in order[:5]]
    assert [r.prompt for r in splits["train"]] == [f"p {i}" for i in order[5:]]


def test_sources_have_their_own_columns_and_splits(tmp_path):
    import datasets

    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"question": "a 0", "good": "x", "rejected": "y"}) + "\n")
    rows = [{"question": f"b {i}", "chosen": "x", "rejected": "y"} for i in range(3)]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows),
                          "test_prefs": datasets.Dataset.from_list(rows[:1])}
                         ).save_to_disk(tmp_path / "b")
    # data.columns applies to every source, a source's own columns on top.
    cfg = DataConfig(columns={"prompt": "question"}, mix=[
        {"path": str(a), "columns": {"chosen": "good"}, "val_split": "train"},
        {"path": str(tmp_path / "b"), "split": "train_prefs", "val_split": "test_prefs"}])
    splits = load_splits(cfg, "pairwise", seed=0)
    assert sorted(r.prompt for r in splits["train"]) == ["a 0", "b 0", "b 1", "b 2"]
    assert sorted(r.prompt for r in splits["val"]) == ["a 0", "b 0"]
    cfg.mix[1]["split"] = "train"
    with pytest.raises(RecordError, match=r"/b: has no split 'train' \(its splits: "
                                          r"train_prefs, test_prefs\): choose one with "
                                          r"data.mix\[1\].split=<name>$"):
        load_splits(cfg, "pairwise", seed=0)


def test_a_bad_record_in_a_mixture_names_its_file(tmp_path):
    a, b = pairs(tmp_path / "a.jsonl", 4), tmp_path / "b.jsonl"
    b.write_text(json.dumps({"prompt": "b", "chosen": "x"}) + "\n")
    cfg = DataConfig(mix=[{"path": a}, {"path": str(b)}])
    with pytest.raises(RecordError, match=rf"^{b}:1: field 'rejected': missing$"):
        load_splits(cfg, "pairwise", seed=0)


@pytest.mark.parametrize("mix, message", [
    ([], r"^data.mix: lists no source"),
    ([{"weight": 2.0}], r"^data.mix\[0\]: field 'path': missing: name the source's file"),
    ([{"path": "A", "weight": 0}], r"^data.mix\[0\]: field 'weight': expected a number > 0"),
    ([{"path": "A", "wieght": 1}], r"^data.mix\[0\]: has keys \['path', 'wieght'\]; a source "
                                   r"has the keys path, weight, split, val_split, columns$"),
    ([{"path": "A", "weight": 0.01}], r"^data.mix\[0\]: field 'weight': 0.01 of the 3 "
                                      r"training records of .*A.jsonl is none of them"),
])
def test_bad_mixtures_are_refused_naming_the_entry(tmp_path, mix, message):
    path = pairs(tmp_path / "A.jsonl", 3)
    mix = [{**m, "path": path} if m.get("path") == "A" else m for m in mix]
    with pytest.raises(RecordError, match=message):
        load_splits(DataConfig(mix=mix, val_path=path), "pairwise", seed=0)


def test_path_and_mix_are_exclusive(tmp_path):
    path = pairs(tmp_path / "a.jsonl", 3)
    with pytest.raises(RecordError, match=rf"^data.path: {path} and data.mix both name the "
                                          r"records; give one"):
        load_splits(DataConfig(path=path, mix=[{"path": path}]), "pairwise", seed=0)


def test_the_files_preset_without_a_source_is_an_error_not_the_synthetic_task():
    with pytest.raises(RecordError, match=r"^data: data=files reads records from a file or "
                                          r"dataset: give data.path=<file>"):
        load_splits(DataConfig(synthetic=None), "pairwise", seed=0)


def test_the_datamodule_keeps_the_mixture_description(tmp_path, tokenizer):
    from prefopt.data.datamodule import PreferenceDataModule

    a, b = pairs(tmp_path / "a.jsonl", 10), pairs(tmp_path / "b.jsonl", 10)
    cfg = DataConfig(mix=[{"path": a, "weight": 0.5}, {"path": b, "weight": 1.5}],
                     val_path=a, chat_template=False)
    datamodule = PreferenceDataModule(cfg, tokenizer)
    datamodule.setup()
    assert [s["records_used"] for s in datamodule.sources["train"]] == [5, 15]
    assert datamodule.sources["val"] == [{"path": a, "split": "train", "records_read": 10,
                                          "records_used": 10}]
    assert len(datamodule.groups["train"]) == 20


def test_a_missing_file_names_the_setting_that_gave_it(tmp_path):
    good, missing = pairs(tmp_path / "a.jsonl", 10), str(tmp_path / "x.jsonl")
    cases = [(DataConfig(path=missing), "data.path: "),
             (DataConfig(path=good, val_path=missing), "data.val_path: "),
             (DataConfig(mix=[SourceConfig(path=good), SourceConfig(path=missing)]),
              "data.mix[1]: field 'path': ")]
    for cfg, named in cases:
        with pytest.raises(RecordError) as err:
            load_splits(cfg, "pairwise", seed=0)
        assert str(err.value).startswith(f"{named}no such file or directory {missing!r}")
        assert "give the path of an existing" in str(err.value)
