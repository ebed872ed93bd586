"""The console scripts as a user runs them: exit codes, messages, outputs on disk."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
FAST = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "data.synthetic.n_train=64",
        "data.synthetic.n_val=16", "data.batch_size=8"]


def run(*args, cwd=None, env=None, script="prefopt-train"):
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_typo_names_the_key(tmp_path):
    result = run("objective.betaa=1", cwd=tmp_path)
    assert result.returncode != 0
    assert "betaa" in result.stderr


def test_unknown_objective_lists_the_available_ones(tmp_path):
    result = run("objective=nosuch", cwd=tmp_path)
    assert result.returncode != 0
    assert "nosuch" in result.stderr
    assert "Available options in 'objective'" in result.stderr
    assert "dpo" in result.stderr and "ipo" in result.stderr


def test_help_and_cfg_job(tmp_path):
    help_text = run("--help", cwd=tmp_path).stdout
    assert "prefopt-train" in help_text
    (group,) = [line for line in help_text.splitlines() if line.startswith("objective: ")]
    assert {"dpo", "ipo", "kto", "steerlm"} <= set(group.removeprefix("objective: ").split(", "))
    job = run("--cfg", "job", "objective=ipo", cwd=tmp_path)
    assert job.returncode == 0 and "name: ipo" in job.stdout


def test_plugins_lists_builtins():
    result = run(script="prefopt-plugins")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "distribution", "batch", "format", "description"]
    dpo = next(line for line in lines if line.startswith("dpo "))
    assert "prefopt 0.1.0" in dpo and "pairwise" in dpo
    synthetic = next(line for line in lines if line.startswith("synthetic "))
    assert "reward" in synthetic and "prefopt.data.synthetic:score" in synthetic


def test_bad_data_file_fails_naming_file_line_field(tmp_path):
    data = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "sort 21", "chosen": "12", "rejected": "21"})
    data.write_text("\n".join([good] * 6 + ['{"prompt": "sort 1", "chosen": "1"}']) + "\n")
    result = run(f"data.path={data}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1
    assert f"{data}:7: field 'rejected': missing" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_ipo_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    result = run("objective=ipo", "objective.beta=0.5", *FAST, f"output_dir={out}",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/rewards/accuracies went from 0.50" in result.stdout
    config = (out / "config.yaml").read_text()
    assert "name: ipo" in config and "beta: 0.5" in config
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "val/rewards/accuracies" in rows[0] and "train/loss" in rows[0]
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"last.ckpt"}
    assert any(p.name.startswith("best-step") for p in (out / "checkpoints").iterdir())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "policy")
    tokenizer = AutoTokenizer.from_pretrained(out / "policy")
    assert model.config.vocab_size == len(tokenizer)
    report = json.loads((out / "data_report.json").read_text())
    assert report["train"]["kept"] == 64 and report["val"]["kept"] == 16


def test_a_forced_unknown_objective_key_is_refused_in_one_line(tmp_path):
    # `+` forces the key into the composed config; the objective would silently ignore it.
    result = run("objective=ipo", "+objective.bta=1", f"output_dir={tmp_path / 'out'}", *FAST,
                 cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prefopt-train: error: objective.bta: objective 'ipo' has no "
                           "setting 'bta'") and "Did you mean objective.beta?" in last
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("override,culprit", [
    ("objective.beta=-1", "objective.beta must be > 0, got -1"),
    ("data.batch_size=0", "data.batch_size=0: records per batch must be a whole number >= 1"),
    ("trainer.max_steps=abc", "trainer.max_steps='abc': must be a whole number"),
])
def test_a_bad_setting_is_one_line_naming_it(tmp_path, override, culprit):
    out = tmp_path / "out"
    key = override.split("=")[0]
    fast = [o for o in FAST if o.split("=")[0] != key]
    result = run(*fast, override, f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prefopt-train: error: ") and culprit in last
    assert not (out / "config.yaml").exists()


def test_a_model_path_that_is_no_model_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    result = run("model=hf", f"model.name_or_path={missing}", *FAST,
                 f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"prefopt-train: error: model.name_or_path={missing}: is neither a local "
                    "folder (no such path) nor a hub id (owner/name) that can be reached; "
                    "give an existing model folder or a hub id")
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    result = run("model=hf", f"model.name_or_path={folder}", *FAST,
                 f"output_dir={tmp_path / 'out2'}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"prefopt-train: error: model.name_or_path={folder}: the folder "
                           "is not a saved model (it holds none of config.json)")
