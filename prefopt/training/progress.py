"""The progress bars of prefopt-train: Lightning's Rich and tqdm bars, told about steps.

prefopt's runs are bounded by `trainer.max_steps` with `max_epochs: -1`, which Lightning's
bars would print as "Epoch 3/-2" (Rich) or "Epoch 3" alone (tqdm). These say
"Epoch 3 · step 1200/1800" instead. Both show the latest training loss and accuracy, which
the module keeps in its `MetricLog.bar` (recording them with Lightning at every step would
cost more than the tiny default model's step saves elsewhere: `prefopt.training.metrics`).
"""

from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

# `progress_bar` values and what each means (conf/train.yaml documents them).
PROGRESS_BARS = ("rich", "tqdm")


def with_training_metrics(items: dict, pl_module) -> dict:
    """The bar's items with the module's latest training metrics (`MetricLog.bar`) first."""
    metric_log = getattr(pl_module, "metric_log", None)
    bar = {name: float(value) for name, value in getattr(metric_log, "bar", {}).items()}
    return {**bar, **items}


def step_description(trainer, current_epoch: int) -> str:
    """"Epoch 3 · step 1200/1800": the epoch (of how many, where bounded) and the step."""
    description = f"Epoch {current_epoch}"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        description += f"/{trainer.max_epochs - 1}"
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        description += f" · step {trainer.global_step}/{trainer.max_steps}"
    return description


class StepProgressBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict:
        return with_training_metrics(super().get_metrics(trainer, pl_module), pl_module)

    def _get_train_description(self, current_epoch: int) -> str:
        # Overrides a private hook of Lightning's bar (2.x): the only place its text is made.
        return step_description(self.trainer, current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning writes the description once per epoch; the step count moves every batch.
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class StepTQDMProgressBar(TQDMProgressBar):
    """Lightning's one-line tqdm bar (friendlier to log files than Rich's live table)."""

    def get_metrics(self, trainer, pl_module) -> dict:
        return with_training_metrics(super().get_metrics(trainer, pl_module), pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        # Lightning sets "Epoch N" once per epoch; the step count is redrawn with the bar.
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            bar.set_description(step_description(trainer, trainer.current_epoch),
                                refresh=False)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
