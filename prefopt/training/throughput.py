"""Training throughput: tokens per second and padding, per logged step and over the run.

Logged at the steps whose values the loggers receive (every `trainer.log_every_n_steps`),
beside `train/`, each over the steps since the previous logged one (the window):

- `perf/tokens_per_sec`: the window's non-padding tokens (every row the policy reads,
  chosen, rejected and KTO's mismatched ones alike) over its wall time, each step measured
  from the end of the previous step (or of the last validation) to the end of this one, so
  that data loading, logging and the optimizer count too. This process's figure: under DDP
  each device logs its own.
- `perf/padding`: the share of the window's token slots (rows × padded width) that are
  padding, i.e. compute spent on nothing.

Recording a value with Lightning costs ~0.3 ms, as much as a small model's step spends on
other things; the steps between logged ones only add their counts.

`totals()` gives the run's mean: all tokens over all training-step time (validation
excluded), for summary.json.
"""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from prefopt.training.metrics import logger_writes_this_step


class Throughput(pl.Callback):
    def __init__(self):
        self.tokens = 0  # a device tensor once training starts: summed without a sync
        self.seconds = 0.0
        self._mark: float | None = None
        # The window since the last logged step: tokens (a device tensor), slots, seconds.
        self._window: list = [0, 0, 0.0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._mark is None:  # the first step, or the first after a validation
            self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        mask = batch.get("attention_mask") if isinstance(batch, dict) else None
        if not isinstance(mask, torch.Tensor):  # prompt batches: samples are made in the step
            return
        now = time.perf_counter()
        seconds, self._mark = now - self._mark, now
        tokens = mask.sum()
        self.tokens = self.tokens + tokens
        self.seconds += seconds
        window = self._window
        window[0], window[1], window[2] = window[0] + tokens, window[1] + mask.numel(), \
            window[2] + seconds
        if not logger_writes_this_step(trainer):
            return
        self._window = [0, 0, 0.0]
        pl_module.log("perf/tokens_per_sec", window[0] / max(window[2], 1e-9), on_step=True,
                      on_epoch=False, batch_size=1)
        pl_module.log("perf/padding", 1 - window[0] / window[1], on_step=True,
                      on_epoch=False, batch_size=1)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._mark = None  # validation time is no training step's

    def totals(self) -> dict[str, float]:
        """{train_tokens, train_seconds, tokens_per_sec} of the training steps so far."""
        tokens = int(self.tokens)
        return {"train_tokens": tokens, "train_seconds": self.seconds,
                "tokens_per_sec": tokens / self.seconds if self.seconds else 0.0}
