"""The typed schema of prefopt-train's config: registered once, typo-proof, and the
error type for settings that cannot work together."""

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from prefopt.training.config import ConfigError, TrainConfig, register_schema


def test_the_schema_is_in_the_config_store():
    register_schema()
    register_schema()  # twice is harmless
    assert "train_schema.yaml" in ConfigStore.instance().list("")


def test_the_schema_refuses_unknown_keys_and_wrong_types():
    cfg = OmegaConf.structured(TrainConfig)
    with pytest.raises(ConfigAttributeError):
        cfg.optimizer.lrr = 0.1
    with pytest.raises(ValidationError):
        cfg.optimizer.lr = "fast"
    with pytest.raises(ValidationError):
        cfg.reference = "sometimes"


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
