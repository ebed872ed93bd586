"""benchmarks/gpu/run.sh's start-up on a host like the GPU hosts it is written for, on the
CPU: a fresh venv that has only what such a host's python has (torch, triton,
transformers, Lightning, peft, accelerate and what they need), plus the wheels of
benchmarks/gpu/wheels.sh, installed with no index. `run.sh collect` then installs prefopt,
collects what `tests` and `bench` would run and imports report.py's matplotlib.

The wheel folder is built once per Python version by wheels.sh (from the package index or
pip's cache) into ~/.cache/prefopt/gpu-wheels-X.Y, or taken from $PREFOPT_GPU_WHEELS; the
test skips, saying so, when neither works. Nothing here needs the network once the folder
exists.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
# What run.sh says the host's python already has.
HOST_PACKAGES = ["torch", "triton", "transformers", "pytorch-lightning", "peft", "accelerate",
                 "setuptools"]  # setuptools: `pip install -e .` without build isolation
# Wheels whose absence was the bug: pyproject's addopts need pytest-benchmark, report.py
# needs matplotlib.
MUST_SHIP = ["pytest-", "pytest_benchmark-", "py_cpuinfo2-", "matplotlib-", "wheel-"]

pytestmark = pytest.mark.slow


def _wheel_dir() -> Path:
    given = os.environ.get("PREFOPT_GPU_WHEELS")
    return Path(given) if given else Path.home() / ".cache" / "prefopt" / f"gpu-wheels-{PY}"


@pytest.fixture(scope="session")
def gpu_wheels():
    folder = _wheel_dir()
    if not all(any(p.name.startswith(m) for p in folder.glob("*.whl")) for m in MUST_SHIP):
        env = {**os.environ, "PIP": f"{sys.executable} -m pip"}
        proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/wheels.sh"), str(folder), PY],
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"no wheel folder at {folder}, and benchmarks/gpu/wheels.sh could not "
                        f"make one (no package index or pip cache?): {proc.stderr[-500:]}")
    return folder


def _closure(names) -> list[metadata.Distribution]:
    """The installed distributions `names` need, recursively (their extras' needs only
    where a requirement asks for the extra)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(n) for n in names]
    while todo:
        req = todo.pop()
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional need this environment lacks
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = [""] + sorted(req.extras)
            if sub.marker is None or any(sub.marker.evaluate({"extra": x}) for x in extras):
                todo.append(sub)
    return list(seen.values())


def _host_site(folder: Path) -> Path:
    """A folder of links to the files of HOST_PACKAGES' closure in this environment."""
    folder.mkdir()
    for dist in _closure(HOST_PACKAGES):
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if top != "__pycache__" and not (folder / top).exists() and (base / top).exists():
                (folder / top).symlink_to(base / top)
    return folder


def test_run_sh_installs_and_collects_from_the_wheels_alone(gpu_wheels, tmp_path):
    host = _host_site(tmp_path / "host-site")
    assert not (host / "pytest").exists() and not (host / "matplotlib").exists(), \
        "the host's packages must not bring what the wheels are meant to"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    # Python < 3.12 seeds a venv with an old setuptools, which would hide the host's.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"],
                   capture_output=True, check=False)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "host.pth").write_text(f"{host}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV",
                                                                    "TRITON", "PIP_"))}
    env.update(PYTHON=str(python), WHEELS=str(gpu_wheels), PREFOPT_SITE=str(tmp_path / "site"),
               PIP_NO_INDEX="1", PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "collect"], env=env,
                          capture_output=True, text=True, timeout=900)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "collect: matplotlib" in log and "no top-level kernels package" in log, log
    assert "error" not in proc.stdout.lower(), log
