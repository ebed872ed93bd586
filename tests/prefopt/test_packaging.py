"""A plain (non-editable) wheel works: configs travel as package data, run from anywhere."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_install_runs_from_another_directory(tmp_path):
    wheels, site, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("prefopt-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    # The wheel's copy shadows the editable one: PYTHONPATH comes first on sys.path.
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import prefopt.conf, prefopt.kernels; "
                            "print(prefopt.conf.__file__); print(prefopt.kernels.__file__)"],
                           env=env, cwd=elsewhere, capture_output=True, text=True, check=True)
    assert all(line.startswith(str(site)) for line in where.stdout.split())
    result = subprocess.run(
        [str(site / "bin" / "prefopt-train"), "trainer.max_steps=2",
         "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
         "data.synthetic.n_train=16", "data.synthetic.n_val=8", "data.batch_size=4",
         "export_policy=false"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "went from 0.50" in result.stdout
    runs = list((elsewhere / "outputs").glob("*/*/config.yaml"))
    assert len(runs) == 1  # the default output_dir: Hydra's run directory under cwd
