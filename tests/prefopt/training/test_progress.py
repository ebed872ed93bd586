"""The progress bar: Rich by default, steps in its description, tqdm or none on request."""

import types

from prefopt.training.progress import StepProgressBar
from prefopt.training.train import _progress_bar


def _described(**trainer):
    bar = StepProgressBar()
    bar._trainer = types.SimpleNamespace(**trainer)
    return bar._get_train_description(3)


def test_description_counts_steps_when_epochs_are_unbounded():
    assert _described(max_epochs=-1, max_steps=1800, global_step=1200) == \
        "Epoch 3 · step 1200/1800"


def test_description_with_bounded_epochs_and_no_step_limit():
    assert _described(max_epochs=5, max_steps=-1, global_step=7) == "Epoch 3/4"


def test_rich_is_the_default_tqdm_or_disabled_leave_lightnings(compose):
    bars = _progress_bar(compose())
    assert [type(c) for c in bars] == [StepProgressBar]
    assert bars[0].refresh_rate == 4  # redraws a second: Lightning's 100 cost a core
    assert _progress_bar(compose("progress_bar=tqdm")) == []
    assert _progress_bar(compose("trainer.enable_progress_bar=false")) == []


def test_unknown_progress_bar_is_an_error(compose):
    import pytest
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose("progress_bar=fancy")
    assert "fancy" in str(err.value.__cause__ or err.value)
