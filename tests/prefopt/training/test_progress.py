"""The progress bar: Rich by default, steps in its description, tqdm or none on request."""

import types

import pytest
import pytorch_lightning as pl
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

from prefopt.training.config import ConfigError
from prefopt.training.metrics import MetricLog
from prefopt.training.progress import StepProgressBar, StepTQDMProgressBar, step_description
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


def test_tqdm_bar_counts_steps_too():
    trainer = types.SimpleNamespace(max_epochs=-1, max_steps=1800, global_step=1200)
    assert step_description(trainer, 3) == "Epoch 3 · step 1200/1800"


@pytest.mark.parametrize("bar_type", [StepProgressBar, StepTQDMProgressBar])
def test_both_bars_show_the_latest_training_metrics_from_the_metric_log(bar_type):
    """Training values reach the bar through `MetricLog.bar` at every step, not through
    Lightning's log; validation values still come from Lightning's progress-bar metrics."""
    import torch

    module = types.SimpleNamespace(metric_log=MetricLog())
    module.metric_log.bar = {"train/loss": torch.tensor(0.25)}
    trainer = types.SimpleNamespace(loggers=[], progress_bar_metrics={"val/loss": 0.5})
    assert bar_type().get_metrics(trainer, module) == {"train/loss": 0.25, "val/loss": 0.5}


def test_rich_is_the_default_tqdm_on_request_none_when_disabled(compose):
    bars = _progress_bar(compose())
    assert [type(c) for c in bars] == [StepProgressBar]
    assert bars[0].refresh_rate == 4  # redraws a second: Lightning's 100 cost a core
    assert [type(c) for c in _progress_bar(compose("progress_bar=tqdm"))] == \
        [StepTQDMProgressBar]
    assert _progress_bar(compose("trainer.enable_progress_bar=false")) == []


def test_the_trainer_shows_the_bar_asked_for(compose):
    """Lightning picks Rich itself when no bar is given: tqdm must be given explicitly."""
    def shown(*overrides):
        bar = pl.Trainer(callbacks=_progress_bar(compose(*overrides)), logger=False,
                         enable_checkpointing=False).progress_bar_callback
        return bar

    tqdm = shown("progress_bar=tqdm")
    assert isinstance(tqdm, TQDMProgressBar) and not isinstance(tqdm, RichProgressBar)
    assert isinstance(shown(), RichProgressBar)


def test_a_progress_bar_outside_the_schema_is_refused_by_name():
    """A config that did not come through the schema (train() called directly)."""
    cfg = OmegaConf.create({"progress_bar": "fancy", "trainer": {}})
    with pytest.raises(ConfigError, match=r"^progress_bar='fancy' is not a progress bar; set "
                                          r"progress_bar=rich or progress_bar=tqdm"):
        _progress_bar(cfg)


def test_unknown_progress_bar_is_an_error(compose):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose("progress_bar=fancy")
    assert "fancy" in str(err.value.__cause__ or err.value)
