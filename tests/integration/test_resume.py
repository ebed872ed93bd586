"""A run killed with SIGKILL mid-training and resumed with ckpt_path=last ends exactly where
an uninterrupted run with the same seed ends; nothing it had written is lost."""

import csv
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prefopt.data.sampler import ResumableSampler

BIN = Path(sys.executable).parent
# 300 records in batches of 8: 38 batches an epoch, so the checkpoint at step 50 falls
# in the middle of the second epoch.
RUN = ["trainer.max_steps=400", "trainer.val_check_interval=50", "data.synthetic.n_train=300",
       "data.synthetic.n_val=32", "data.batch_size=8", "trainer.enable_progress_bar=false",
       "export_policy=false"]


def train(*args, cwd):
    return subprocess.run([str(BIN / "prefopt-train"), *RUN, *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    whole = train(f"output_dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]

    run = tmp_path / "killed"
    process = subprocess.Popen([str(BIN / "prefopt-train"), *RUN, f"output_dir={run}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    checkpoint = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the checkpoint file be complete; training goes on meanwhile
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "summary.json").exists()

    resumed = train(f"output_dir={run}", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert got["steps"] == expected["steps"] == 400
    for part in ("start", "end"):
        for key, value in expected[part].items():
            assert got[part][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (part, key)
    # The metrics before the kill are kept: in the merged metrics.csv and, whole, aside.
    assert (run / "metrics.before-resume.csv").exists()
    with open(run / "metrics.csv") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f)]
    assert steps[0] == 0 and max(steps) >= 399


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too), by its SHA-256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, *names: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("prefopt-train: error:")]
    for name in names:
        assert name in line, line


def start_and_kill_after_first_checkpoint(args, run: Path, cwd: Path) -> None:
    process = subprocess.Popen([str(BIN / "prefopt-train"), *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=cwd)
    checkpoint = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:  # written whole, renamed
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "summary.json").exists()


@pytest.mark.slow
def test_a_killed_hf_run_resumes_with_the_readme_command(tmp_path):
    """A model=hf run (a local model, narrower than the default tiny one) is killed and
    resumed with the README's command, nothing else: the resume runs the run's own
    config.yaml (the defaults would build another model), ends exactly as an
    uninterrupted run, and prefopt-eval reads the run after. Resumes that are refused
    first change no byte of the run."""
    from prefopt.models import ModelConfig, TinyModelConfig, build_policy, build_tokenizer

    model_cfg = ModelConfig(tiny=TinyModelConfig(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1))
    tokenizer = build_tokenizer(model_cfg)
    torch.manual_seed(0)
    model = tmp_path / "model"
    build_policy(model_cfg, tokenizer).save_pretrained(model)
    tokenizer.save_pretrained(model)
    # 25 batches an epoch: the kill falls after the checkpoint at step 10, mid-epoch.
    hf = ["model=hf", f"model.name_or_path={model}", "trainer.max_steps=60",
          "trainer.val_check_interval=10", "data.synthetic.n_train=100",
          "data.synthetic.n_val=16", "data.batch_size=4", "trainer.enable_progress_bar=false",
          "export_policy=false"]

    def prefopt(*args, script="prefopt-train"):
        return subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)

    whole = prefopt(*hf, f"output_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "run"
    start_and_kill_after_first_checkpoint([*hf, f"output_dir={run}"], run, tmp_path)
    before = snapshot(run)

    # Refused, each with one line naming the culprit, and the run left byte for byte.
    refused(prefopt(f"output_dir={run}", "ckpt_path=last", "optimizer.lr=0.5", "model=tiny",
                    "seed=1"),
            "a resume cannot change", "model.name_or_path", "optimizer.lr (0.001 in the run, "
            "0.5 now)", "seed (0 in the run, 1 now)")
    refused(prefopt(f"output_dir={run}"), f"output_dir={run} already holds a run")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    refused(prefopt(f"output_dir={run}", f"ckpt_path={broken}"), "is not a readable checkpoint")
    assert snapshot(run) == before

    resumed = prefopt(f"output_dir={run}", "ckpt_path=last")  # the README's command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())
    got = json.loads((run / "summary.json").read_text())
    assert got["steps"] == expected["steps"] == 60
    for part in ("start", "end"):
        assert got[part].keys() == expected[part].keys()
        for key, value in expected[part].items():
            assert got[part][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (part, key)
    # The run's files before the resume are all kept: config.yaml as it was started (the
    # resumed one differs by ckpt_path), the metrics as they were.
    assert snapshot(run)["config.before-resume.yaml"] == before["config.yaml"]
    assert snapshot(run)["metrics.before-resume.csv"] == before["metrics.csv"]
    config = (run / "config.yaml").read_text()
    assert f"name_or_path: {model}" in config and "ckpt_path: last" in config
    with open(run / "metrics.csv") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f)]
    assert steps[0] == 0 and max(steps) >= 59

    evaluated = prefopt(str(run), script="prefopt-eval")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((run / "eval.json").read_text())["metrics"]
    assert metrics["val/loss"] == pytest.approx(got["end"]["val/loss"], rel=1e-6)


def test_resume_without_a_checkpoint_names_it(tmp_path):
    result = train(f"output_dir={tmp_path / 'new'}", "ckpt_path=last", cwd=tmp_path)
    assert result.returncode != 0
    assert "ckpt_path=last: no checkpoint at" in result.stderr


def test_sampler_order_depends_on_seed_and_epoch_only_and_can_start_midway():
    a, b = ResumableSampler(10, seed=3), ResumableSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    b.start_at(4)
    assert list(b) == full[4:] and list(b) == full  # start_at applies once
    a.set_epoch(3)
    assert sorted(list(a)) == list(range(10)) and list(a) != full
    assert list(ResumableSampler(5, seed=0, shuffle=False)) == [0, 1, 2, 3, 4]
