"""Checkpoints a resume can trust: `last.ckpt` rewritten at every validation, and every
checkpoint file written whole or not at all.

Lightning's own `save_last` rewrites last.ckpt only when a top-k checkpoint is saved,
that is when the monitored metric improves: on a plateau it kept the first validation's
state. And its `TorchCheckpointIO` stages the file in the system's temporary folder and
moves it over, which across filesystems is a copy onto the destination: a full disk left
a truncated last.ckpt in place of the previous one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

from prefopt.data.output import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's own folder, fsync, rename:
    the previous file at that path survives any failure whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # a remote URL: fsspec's transaction is what there is
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("`Trainer.save_checkpoint(..., storage_options=...)` with "
                            f"`storage_options` arg is not supported for {type(self).__name__}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda f: torch.save(checkpoint, f))


class LastCheckpoint(Checkpoint):
    """Writes `dirpath/last.ckpt` at the end of every validation during fit, improved or
    not. A Checkpoint subclass, so that Lightning runs it after the other callbacks'
    validation hooks (ModelCheckpoint's state in the file is then current) and reports it
    as the checkpointing callback it is."""

    def __init__(self, dirpath: Path):
        super().__init__()
        self.path = Path(dirpath) / "last.ckpt"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return  # trainer.validate() before and after training is not a training state
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
