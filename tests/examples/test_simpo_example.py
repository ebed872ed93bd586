"""examples/prefopt-simpo as a user gets it: pip-installed elsewhere, found, trained, tested.

The package is installed into a temporary --target (no network, no dependencies: prefopt
comes from this environment) and put on PYTHONPATH, so nothing global changes.
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "prefopt-simpo"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(install_package):
    """(site, source): the example installed into `site`, and the copy it was built from."""
    site = install_package(EXAMPLE)
    return site, site.parent / "source"


@pytest.fixture
def run(installed, run_with_site):
    def _run(*args, script="prefopt-train", cwd=None):
        return run_with_site(installed[0], *args, script=script, cwd=cwd)

    return _run


def test_prefopt_plugins_shows_it_with_its_distribution(run):
    result = run(script="prefopt-plugins")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert rows["simpo"].split()[1:4] == ["prefopt-simpo", "0.1.0", "pairwise"]
    assert rows["simpo_llama3_instruct"].split()[1:4] == ["prefopt-simpo", "0.1.0", "preset"]
    assert rows["dpo"].split()[1:3] == ["prefopt", "0.1.0"]


def test_prefopt_train_objective_simpo_two_steps(run, fast_overrides, tmp_path):
    out = tmp_path / "run"
    result = run("objective=simpo", "objective.gamma=0.5", *fast_overrides,
                 "export_policy=false", f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    config = (out / "config.yaml").read_text()
    assert "name: simpo" in config and "beta: 2.0" in config and "gamma: 0.5" in config
    with open(out / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    assert {"train/loss", "train/simpo/above_target", "val/rewards/accuracies"} <= columns
    assert "val/kl" not in columns  # reference-free: no reference model was built


def test_preset_composes_with_its_values(run, tmp_path):
    result = run("--cfg", "job", "objective=simpo_llama3_instruct", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: simpo\n  beta: 2.5\n  gamma: 1.375" in result.stdout


def test_the_examples_own_tests_pass(installed):
    site, source = installed
    # Run from the copy: its pyproject.toml makes it pytest's rootdir, so prefopt's own
    # conftest and options stay out; PYTHONPATH makes it import the installed package.
    result = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "tests"],
                            capture_output=True, text=True, cwd=source, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"^\d+ passed in", result.stdout, re.M)  # all ran, none skipped
