"""Unpaired and ranked records: parsing, errors naming record and field, unpairing, and the
synthetic task's unpaired records and graded rankings."""

import json

import pytest

from prefopt.data.records import RecordError, read_records, unpair
from prefopt.data.synthetic import SyntheticConfig, is_correct, score, splits


def jsonl(tmp_path, *records):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_unpaired_label_must_be_boolean(tmp_path):
    good = {"prompt": "sort 21", "completion": "12", "label": True}
    path = jsonl(tmp_path, good, {**good, "label": 1})
    with pytest.raises(RecordError, match=r"d.jsonl:2: field 'label': expected a boolean"):
        read_records(path, "unpaired")
    (record,) = read_records(jsonl(tmp_path, good), "unpaired")
    assert record.label is True and record.completions == ("12",)


@pytest.mark.parametrize("bad,field,message", [
    ({"ranks": [1, None]}, "ranks[1]", "expected an integer rank, got None"),
    ({"ranks": [1, "2"]}, "ranks[1]", "expected an integer rank, got '2'"),
    ({"ranks": [1, 2.5]}, "ranks[1]", "expected an integer rank"),
    ({"ranks": [1]}, "ranks", "expected a list of 2 ranks"),
    ({"completions": ["12"], "ranks": [1]}, "completions", "at least 2 completions"),
    ({"ranks": None}, "ranks", "missing"),
])
def test_ranking_errors_name_record_and_field(tmp_path, bad, field, message):
    record = {"prompt": "sort 21", "completions": ["12", "21"], "ranks": [1, 2], **bad}
    with pytest.raises(RecordError) as err:
        read_records(jsonl(tmp_path, record), "ranked")
    assert str(err.value).startswith(f"{tmp_path / 'd.jsonl'}:1: field '{field}': ")
    assert message in str(err.value)


def test_nectar_style_rankings(tmp_path):
    nectar = {"prompt": "sort 321", "answers": [{"answer": "132", "rank": 2},
                                                {"answer": "123", "rank": 1},
                                                {"answer": "3", "rank": 3}]}
    (record,) = read_records(jsonl(tmp_path, nectar), "ranked")
    assert record.completions == ("132", "123", "3") and record.ranks == (2, 1, 3)
    broken = {"prompt": "x", "answers": [{"answer": "a", "rank": 1}, {"answer": "b"}]}
    with pytest.raises(RecordError, match=r":1: field 'answers\[1\].rank': missing"):
        read_records(jsonl(tmp_path, broken), "ranked")


def test_unpair_turns_each_pair_into_two_labelled_records(tmp_path):
    path = jsonl(tmp_path, {"prompt": "sort 21", "chosen": "12", "rejected": "21"})
    records = unpair(read_records(path, "pairwise"))
    assert [(r.completions[0], r.label) for r in records] == [("12", True), ("21", False)]
    assert records[1].where.endswith(":1 (rejected)")


def test_synthetic_unpaired_labels_are_the_programmatic_check():
    records = splits(SyntheticConfig(n_train=300, n_val=10), "unpaired")["train"]
    assert all(r["label"] == is_correct(r["prompt"], r["completion"]) for r in records)
    share = sum(r["label"] for r in records) / len(records)
    assert 0.4 < share < 0.6  # desirable_fraction = 0.5


def test_synthetic_rankings_are_graded_by_score():
    records = splits(SyntheticConfig(n_train=200, n_val=10, k=5), "ranked")["train"]
    for r in records:
        assert len(r["completions"]) == len(set(r["completions"])) == 5
        best = [c for c, rank in zip(r["completions"], r["ranks"]) if rank == 1]
        assert len(best) == 1 and is_correct(r["prompt"], best[0])
        scores = [score(r["prompt"], c) for c in r["completions"]]
        for i in range(5):
            for j in range(5):  # a better score has a better (lower) rank, ties share one
                assert (scores[i] > scores[j]) == (r["ranks"][i] < r["ranks"][j])


def test_unpair_needs_an_unpaired_objective(tokenizer):
    from prefopt.data.datamodule import DataConfig, load_splits

    with pytest.raises(ValueError, match="data.unpair=true turns pairwise records"):
        load_splits(DataConfig(unpair=True), "pairwise", seed=0)
    loaded = load_splits(DataConfig(unpair=True, synthetic=SyntheticConfig(n_train=8, n_val=2)),
                         "unpaired", seed=0)
    assert len(loaded["train"]) == 16 and sum(r.label for r in loaded["train"]) == 8
