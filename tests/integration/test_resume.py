"""A run killed with SIGKILL mid-training and resumed with ckpt_path=last ends exactly where
an uninterrupted run with the same seed ends; nothing it had written is lost."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
