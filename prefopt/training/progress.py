"""The Rich progress bar of prefopt-train: Lightning's RichProgressBar, told about steps.

prefopt's runs are bounded by `trainer.max_steps` with `max_epochs: -1`, which Lightning's
bar would print as "Epoch 3/-2". This one says "Epoch 3 · step 1200/1800" instead.
"""

from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        # Overrides a private hook of Lightning's bar (2.x): the only place its text is made.
        trainer = self.trainer
        description = f"Epoch {current_epoch}"
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            description += f"/{trainer.max_epochs - 1}"
        if trainer.max_steps is not None and trainer.max_steps >= 0:
            description += f" · step {trainer.global_step}/{trainer.max_steps}"
        return description

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning writes the description once per epoch; the step count moves every batch.
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id,
                                 description=self._get_train_description(trainer.current_epoch))
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
