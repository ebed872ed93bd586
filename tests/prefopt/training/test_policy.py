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


def test_an_offline_objectives_state_travels_in_the_checkpoint(tiny_model):
    # BCO's running reward mean δ is training state: a checkpoint written by the offline
    # module carries it, and a fresh module loading that checkpoint continues from it.
    from prefopt.plugins.bco import RunningMean

    saved = _bco_module(tiny_model)
    saved.objective.reward_mean = RunningMean(0.75, 12)
    checkpoint = {}
    saved.on_save_checkpoint(checkpoint)
    resumed = _bco_module(tiny_model)
    assert resumed.objective.reward_mean.count == 0  # a new objective starts at δ = 0
    resumed.on_load_checkpoint(checkpoint)
    assert (resumed.objective.reward_mean.mean, resumed.objective.reward_mean.count) == (0.75, 12)


def _bco_module(tiny_model):
    from prefopt.models import make_reference
    from prefopt.plugins.bco import BCO

    return PreferenceModule(tiny_model, make_reference(tiny_model), BCO(BCO.Config(name="bco")),
                            OptimizerConfig(), SchedulerConfig())
