"""docs/plugins.md stays true: a package built only from the guide's code blocks installs,
is found, trains and passes the tests the guide tells its author to write.

Code blocks whose first line is a comment naming a file (`# src/pkg/__init__.py`) are
written to that path; a TOML block without one is the guide's addition to pyproject.toml.
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
_FILE_COMMENT = re.compile(r"#\s*([\w./-]+\.(?:py|toml|yaml))\s*$")


def package_from_guide(target: Path) -> list[str]:
    """Write the guide's package into `target`; returns the files written."""
    files: dict[str, str] = {}
    pyproject_additions = []
    for language, body in _BLOCK.findall(GUIDE.read_text()):
        first_line = body.splitlines()[0] if body else ""
        named = _FILE_COMMENT.match(first_line)
        if named:
            files[named.group(1)] = body
        elif language == "toml":
            pyproject_additions.append(body)
    assert "pyproject.toml" in files, "the guide shows no pyproject.toml"
    files["pyproject.toml"] += "\n" + "\n".join(pyproject_additions)
    for path, text in files.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(text)
    return sorted(files)


@pytest.fixture(scope="module")
def guide_package(tmp_path_factory, install_package):
    source = tmp_path_factory.mktemp("guide") / "prefopt-hinge"
    written = package_from_guide(source)
    return install_package(source), source, written


def test_guide_describes_a_whole_package(guide_package):
    _, _, written = guide_package
    assert "pyproject.toml" in written
    assert any(p.endswith("__init__.py") for p in written)
    assert any(p.startswith("tests/") for p in written)


def test_guide_package_is_listed_and_trains(guide_package, run_with_site, fast_overrides,
                                            tmp_path):
    site, _, _ = guide_package
    listing = run_with_site(site, script="prefopt-plugins")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows["hinge"][1:3] == ["prefopt-hinge", "0.1.0"]
    out = tmp_path / "run"
    result = run_with_site(site, "objective=hinge", "objective.margin=2", *fast_overrides,
                           "export_policy=false", f"output_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.csv") as f:
        assert "val/rewards/accuracies" in next(csv.reader(f))
    typo = run_with_site(site, "objective=hinge", "objective.margn=2", cwd=tmp_path)
    assert typo.returncode != 0 and "margn" in typo.stderr


def test_guide_tests_pass(guide_package):
    site, source, _ = guide_package
    result = subprocess.run([str(BIN / "pytest"), "-q", "-p", "no:cacheprovider", "tests"],
                            capture_output=True, text=True, cwd=source, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"^\d+ passed in", result.stdout, re.M)
