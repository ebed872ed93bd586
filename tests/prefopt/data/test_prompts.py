"""Prompt-only records for online objectives: read, encoded, and a bad one named."""

import json

import pytest

from prefopt.data.records import RecordError
from prefopt.training.train import build

ONLINE = ["data.batch_size=4", "rollout.num_samples=2", "rollout.max_new_tokens=6"]


def test_prompt_records_from_a_file_and_a_bad_one_named(compose, tmp_path):
    good = tmp_path / "prompts.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"sort {n}"}) + "\n" for n in (321, 54, 987)))
    cfg = compose("objective=reinforce", "data=files", f"data.path={good}",
                  f"data.val_path={good}", *ONLINE)
    _, datamodule, _ = build(cfg)
    datamodule.setup("fit")
    assert [p.text for p in datamodule.groups["train"]] == ["sort 321", "sort 54", "sort 987"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "sort 1"}\n{"prompt": "sort 2"}\n{"question": "sort 3"}\n')
    _, datamodule, _ = build(compose("objective=reinforce", "data=files", f"data.path={bad}",
                                     *ONLINE))
    with pytest.raises(RecordError, match=r"bad.jsonl:3: field 'prompt': missing"):
        datamodule.setup("fit")


def test_a_prompt_that_leaves_no_room_follows_the_declared_rule(compose, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "sort " + "1" * 40}) + "\n"
                    + json.dumps({"prompt": "sort 12"}) + "\n")
    overrides = ["objective=reinforce", "data=files", f"data.path={path}",
                 f"data.val_path={path}", "data.max_length=48",
                 "data.max_prompt_length=null", *ONLINE]
    _, datamodule, _ = build(compose(*overrides))
    datamodule.setup("fit")  # skip (the default): counted in the report
    assert [p.text for p in datamodule.groups["train"]] == ["sort 12"]
    assert datamodule.reports["train"].skipped == {"prompt leaves no room for the completion": 1}
    # "<s><|user|>" + text + "<|end|><|assistant|>": 4 + 45 and 4 + 7 tokens, before the rule.
    assert datamodule.reports["train"].as_dict()["lengths"] == {
        "prompt": {"mean": 30.0, "p50": 11, "p95": 49, "max": 49}, "completion": None}
    _, datamodule, _ = build(compose(*overrides, "data.on_overlong_prompt=error"))
    with pytest.raises(ValueError, match=r"prompts.jsonl:1: field 'prompt': \d+ tokens leave "
                                         r"no room for rollout.max_new_tokens=6"):
        datamodule.setup("fit")
    _, datamodule, _ = build(compose(*overrides, "data.on_overlong_prompt=truncate"))
    datamodule.setup("fit")
    assert all(len(p.ids) + 6 <= 48 for p in datamodule.groups["train"])
    assert datamodule.reports["train"].truncated == {"prompt": 1}


def test_a_mixture_of_prompt_files_is_listed_in_the_report(compose, tmp_path):
    # Two files, weights 1.0 and 0.5: 4 + round(0.5 · 2) = 5 training prompts, and the
    # validation file read whole; each split's report names what each source gave.
    a, b, val = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "val.jsonl"
    for path, numbers in ((a, (11, 12, 13, 14)), (b, (21, 22)), (val, (31,))):
        path.write_text("".join(json.dumps({"prompt": f"sort {n}"}) + "\n" for n in numbers))
    mix = f"[{{path: {a}, weight: 1.0}}, {{path: {b}, weight: 0.5}}]"
    cfg = compose("objective=reinforce", "data=files", f"data.mix={mix}",
                  f"data.val_path={val}", *ONLINE)
    _, datamodule, _ = build(cfg)
    datamodule.setup("fit")
    train = datamodule.reports["train"].as_dict()["sources"]
    assert [(s["path"], s["records_read"], s["records_used"]) for s in train] == [
        (str(a), 4, 4), (str(b), 2, 1)]
    assert len(datamodule.groups["train"]) == 5
    assert [s["records_used"] for s in datamodule.reports["val"].as_dict()["sources"]] == [1]
