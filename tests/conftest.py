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
    from prefopt.config import register_schema

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
