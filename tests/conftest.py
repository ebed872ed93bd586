"""Shared fixtures: the tiny tokenizer and model, and Hydra composition of the real configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Two cores on CI: more threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

BIN = Path(sys.executable).parent  # console scripts of the environment running the tests


@pytest.fixture(scope="session")
def tokenizer():
    from prefopt.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    from prefopt.models import ModelConfig, build_policy

    torch.manual_seed(0)
    return build_policy(ModelConfig(), tokenizer)


@pytest.fixture(scope="session")
def registered():
    """The schema in Hydra's ConfigStore, and group `objective` served lazily from the
    installed objectives' entry points (prefopt.registry.ObjectiveSource)."""
    from prefopt import registry
    from prefopt.training.config import register_schema

    register_schema()
    registry.register_configs()
    return sorted(registry.discover())


# Small enough that a run takes a couple of seconds on one CPU core.
FAST_OVERRIDES = [
    "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false", "data.synthetic.n_train=32", "data.synthetic.n_val=8",
    "data.batch_size=4",
]


@pytest.fixture
def fast_overrides():
    return list(FAST_OVERRIDES)


@pytest.fixture
def compose(registered, tmp_path):
    """compose(*overrides) -> the config `prefopt-train` would run, writing into tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    def _compose(*overrides: str):
        with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
            return hydra_compose(config_name="train",
                                 overrides=[f"output_dir={tmp_path / 'run'}", *overrides])

    return _compose


@pytest.fixture(scope="session")
def install_package(tmp_path_factory):
    """install_package(source_dir) -> site: a local package pip-installed, as a user would,
    into a temporary --target (no network, no dependencies: prefopt comes from this
    environment). pip builds in the source tree, so it builds a copy."""
    import shutil
    import subprocess

    def _install(source: Path) -> Path:
        base = tmp_path_factory.mktemp(source.name)
        copy, site = base / "source", base / "site"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", ".pytest_cache"))
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q",
                        "install", "--no-deps", "--no-build-isolation", "--target", str(site),
                        str(copy)], check=True, capture_output=True, timeout=300)
        return site

    return _install


@pytest.fixture(scope="session")
def run_with_site():
    """run_with_site(site, *args, script="prefopt-train", cwd=None): a console script of
    this environment with `site` (an install_package target) first on PYTHONPATH."""
    import subprocess

    def _run(site: Path, *args: str, script: str = "prefopt-train", cwd=None):
        return subprocess.run([str(BIN / script), *args], capture_output=True, text=True,
                              cwd=cwd, env={**os.environ, "PYTHONPATH": str(site)}, timeout=300)

    return _run
