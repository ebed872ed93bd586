"""SteerLM end to end: a steerlm run exports a policy with its schema; prefopt-generate
steers it; an attribute_model run labels responses (API and prefopt-label); prefopt-eval
measures obedience. Runs are two optimizer steps: the plumbing, not the learning."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefopt.data.attributes import AttributeSchema
from prefopt.evaluate import obedience

BIN = Path(sys.executable).parent


def run(command, *args):
    return subprocess.run([str(BIN / command), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def steerlm_run(compose, fast_overrides, tmp_path):
    from prefopt.training.train import train

    train(compose("objective=steerlm", "data.attribute_dropout=0.5", *fast_overrides))
    return tmp_path / "run"


def test_steered_generation_api_and_command(steerlm_run, tmp_path):
    from prefopt.generate import GenerationConfig, generate, load_policy

    policy, tokenizer, schema = load_policy(str(steerlm_run / "policy"))
    assert schema.names == ("quality", "order", "length")
    cfg = GenerationConfig(max_new_tokens=4)
    asked = [{"quality": 4, "order": 1, "length": 3}, {}]
    answers = generate(policy, tokenizer, ["pick 827491", "pick 12"], cfg, schema=schema,
                       attributes=asked)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    out = tmp_path / "answers.jsonl"
    done = run("prefopt-generate", steerlm_run / "policy", "--prompt", "pick 827491",
               "--attributes", "quality=4,order=1", "--max-new-tokens", "4", "--output", out)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["prompt"] == "pick 827491" and row["attributes"] == {"quality": 4, "order": 1}
    # Greedy: the command's answer is the API's for the same request.
    assert row["response"] == generate(policy, tokenizer, ["pick 827491"], cfg, schema=schema,
                                       attributes=[{"quality": 4, "order": 1}])[0]

    before = out.read_text()
    again = run("prefopt-generate", steerlm_run / "policy", "--prompt", "pick 1",
                "--output", out)
    assert again.returncode != 0 and "exists" in again.stderr
    assert out.read_text() == before  # nothing already written is lost

    bad = run("prefopt-generate", steerlm_run / "policy", "--prompt", "pick 1",
              "--attributes", "length=9")
    assert bad.returncode != 0
    assert "field 'attributes.length': 9.0 is outside the schema's range [1, 6]" in bad.stderr


def test_eval_measures_obedience_before_and_after(steerlm_run):
    from prefopt.evaluate import evaluate

    steering = evaluate(steerlm_run, max_prompts=8)["steering"]
    assert steering["prompts"] == 8
    for when in ("before", "after", "after_unconditioned"):
        assert set(steering[when]) == {"quality", "order", "length", "all"}
        assert all(0.0 <= v <= 1.0 for v in steering[when].values())


def test_obedience_counts_by_hand():
    requests = [{"order": 1, "length": 3}, {"order": 0, "length": 2}, {"length": 1}]
    measured = [{"order": 1, "length": 3}, {"order": 1, "length": 2}, {"order": None,
                                                                       "length": 2}]
    rates = obedience(requests, measured)
    assert rates == {"order": 0.5, "length": 2 / 3, "all": 1 / 3}


def test_attribute_model_labels_as_trained(compose, fast_overrides, tmp_path):
    from prefopt.data.collate import collate_groups
    from prefopt.data.records import Record
    from prefopt.data.tokenize import Encoder
    from prefopt.steer.label import AttributeLabeler
    from prefopt.training.train import build, train

    cfg = compose("objective=attribute_model", *fast_overrides)
    train(cfg)
    model_dir = tmp_path / "run" / "policy"
    labeler = AttributeLabeler.load(str(model_dir))
    assert labeler.model.config.num_labels == 3
    prompts, responses = ["pick 827491", "pick 35"], ["987", "3"]
    labels = labeler.label(prompts, responses)

    # Independently: the model on the training path's encoding (no attribute line), scaled
    # back by hand: quality on [0, 4], order on [0, 1], length on [1, 6], rounded, clipped.
    _, datamodule, tokenizer = build(cfg)
    groups, _ = Encoder(tokenizer, datamodule.cfg, condition=False).encode_all(
        [Record(p, (r,), "t", kind="unpaired") for p, r in zip(prompts, responses)])
    batch = collate_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        raw = labeler.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).logits
    for row, label in zip(raw.tolist(), labels):
        expected = {name: float(min(max(round(lo + v * (hi - lo)), lo), hi))
                    for name, lo, hi, v in zip(("quality", "order", "length"), (0, 0, 1),
                                               (4, 1, 6), row)}
        assert label == expected

    source = tmp_path / "responses.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": p, "response": r})
                                for p, r in zip(prompts, responses)) + "\n")
    out = tmp_path / "labelled.jsonl"
    done = run("prefopt-label", model_dir, "--input", source, "--output", out)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["attributes"] for r in rows] == [{k: int(v) for k, v in lab.items()}
                                               for lab in labels]
    # The output is valid training data for objective=steerlm.
    from prefopt.data.records import read_records

    schema = AttributeSchema.load(model_dir)
    for record in read_records(str(out), "attributed"):
        schema.check(dict(record.attributes), record.where)

    source.write_text(json.dumps({"prompt": "pick 1"}) + "\n")
    bad = run("prefopt-label", model_dir, "--input", source, "--output", tmp_path / "x.jsonl")
    assert bad.returncode != 0
    assert f"{source}:1: field 'response': missing" in bad.stderr
    assert not (tmp_path / "x.jsonl").exists()
