"""PolicyModule: where reference log-probs come from."""

import pytest

from prefopt.plugins.dpo import DPO
from prefopt.training.module import PreferenceModule
from prefopt.training.optim import OptimizerConfig, SchedulerConfig


def test_reference_free_loads_no_reference(tiny_model, dpo_module):
    module = dpo_module(tiny_model, reference_free=True)
    assert module.reference is None


def test_reference_required(tiny_model):
    with pytest.raises(ValueError, match="needs a reference model"):
        PreferenceModule(tiny_model, None, DPO(DPO.Config(name="dpo")), OptimizerConfig(),
                         SchedulerConfig())
