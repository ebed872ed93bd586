"""One benchmark run of prefopt: PreferenceModule with the DPO plugin under Lightning.

The module, objective, optimizer and log-prob path are built as `prefopt.training.train.build`
builds them for `prefopt-train objective=dpo`; only the data comes ready-made (the
benchmark's random pairs, collated by prefopt's own collate_groups) and the model has a
published model's shape.
"""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
from clock import StepClock
from job import prepare
from torch.utils.data import DataLoader

from prefopt import registry
from prefopt.data.collate import collate_groups
from prefopt.data.tokenize import EncodedGroup
from prefopt.training.module import PreferenceModule
from prefopt.training.optim import OptimizerConfig, SchedulerConfig

PAD_ID = 0


class _Callbacks(pl.Callback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.clock.step_start()

    def on_before_backward(self, trainer, module, loss):
        self.clock.profiler.mark("loss")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.clock.profiler.mark("clip_start")  # Lightning clips right after this hook

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.clock.step_end()
        metrics = trainer.callback_metrics
        self.clock.record(float(metrics["train/loss"]), float(metrics["train/logps/chosen"]))


def run(spec) -> StepClock:
    shape = spec.shape
    policy, reference, clock, pairs = prepare(spec)
    objective_cls = registry.load("dpo")
    objective = objective_cls(objective_cls.Config(name="dpo", beta=0.1))
    module = PreferenceModule(policy, reference, objective,
                              OptimizerConfig(lr=spec.lr, weight_decay=0.0),
                              SchedulerConfig(name="constant", warmup_steps=0, warmup_ratio=0.0),
                              # Like TRL's side, a reference forward at every step (one epoch
                              # would reuse nothing anyway).
                              reference_reuse=False)
    groups = [EncodedGroup(prompt=p, completions=(c, r)) for p, c, r in pairs]
    # In the data's order, as TRL's sampler is given it (see run_trl.py).
    loader = DataLoader(groups, batch_size=shape.pairs, shuffle=False,
                        collate_fn=lambda g: collate_groups(g, PAD_ID))
    trainer = pl.Trainer(accelerator=spec.device.type, devices=1, precision=spec.precision,
                         max_steps=clock.total_steps, gradient_clip_val=1.0, logger=False,
                         # Every step's metrics, as TRL's side logs them (logging_steps=1):
                         # the module records all of them only on steps the loggers write.
                         log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[_Callbacks(clock)])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        trainer.fit(module, train_dataloaders=loader)
    clock.profiler.detach()
    return clock
