"""A step's metrics: means over every device, weighted right, checked for finiteness.

Both training modules log through `MetricLog`: the objective's metrics (per-example
tensors or scalars) become one mean per name over the global batch, a NaN on any device
stops every device together, and Lightning gets values it only has to record.

Lightning hands a training step's values to the loggers only every
`trainer.log_every_n_steps` steps; recording a value with `LightningModule.log` costs
~0.3 ms on the CPU whether it is written or not (~5 s of the default job's 1800 steps). So a
training step's values (the learning rate's too, `log_learning_rate`) are recorded with
Lightning only on the steps the loggers write: what they receive is unchanged. The
progress bar reads the latest training loss and accuracy from `MetricLog.bar` instead
(`prefopt.training.progress`), every step. Validation values are always recorded (they
are epoch means).

The finiteness check reads the means back from the device, which on an accelerator makes
the host wait for the step's work to finish. On the CPU that is free and every logged batch
is checked at once; on an accelerator the checks are batched: one read-back every
`FINITE_CHECK_EVERY` logged batches, and always before a validation begins, when it ends
(before its checkpoints are written) and when training ends. A NaN then stops the run with
the same message (the first non-finite metric, its stage and step), at most
`FINITE_CHECK_EVERY - 1` batches later, and never after a checkpoint of the broken weights.
"""

from __future__ import annotations

from typing import Mapping

import pytorch_lightning as pl
import torch

# Shown in the progress bar; the rest goes to the loggers only.
PROGRESS_BAR_METRICS = ("loss", "rewards/accuracies")
# Logged batches per finiteness read-back on an accelerator (the CPU checks every one).
FINITE_CHECK_EVERY = 10


def logger_writes_this_step(trainer: pl.Trainer | None) -> bool:
    """Whether the loggers receive this training step's values: Lightning's own test, the
    one its LearningRateMonitor uses (true outside a Trainer, e.g. in unit tests)."""
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True) or trainer.fast_dev_run)


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN or infinite; training cannot go on meaningfully."""


def local_means(metrics: Mapping[str, torch.Tensor], weights: Mapping[str, int],
                n_groups: int) -> dict[str, tuple[torch.Tensor, int]]:
    """{name: (mean, weight)} on this device.

    A metric's weight is `weights[name]` where given (entropy: its tokens); else, for a
    tensor of values (per pair, example or completion), their number, so that the mean is
    that over all values of the global batch; else (a scalar, e.g. the loss, a mean over
    the batch's examples) the number of prompts.
    """
    return {name: (value.detach().float().mean(),
                   int(weights.get(name, value.numel() if value.ndim > 0 else n_groups)))
            for name, value in metrics.items()}


def reduce_across_devices(local: dict[str, tuple[torch.Tensor, int]], known: list[str],
                          trainer: pl.Trainer | None, device: torch.device
                          ) -> dict[str, tuple[torch.Tensor, int]]:
    """{name: (mean, weight)} over the batches of all devices: Σ mean·weight / Σ weight,
    one all-reduce of sums per step (more only when a device sees a new name).

    Lightning's sync_dist cannot replace it: it averages step (train/) values unweighted,
    and on gloo it averages epoch values' summed weights across devices in their integer
    dtype, truncating them (docs/distributed.md).

    Devices may log different metrics (a batch without an undesirable example has no
    rewards/rejected), but an all-reduce needs one layout: `known` holds every name seen
    so far on any device, in the order first seen (rank 0's first: the loss leads), and is
    extended in place, on every device alike, whenever a device sees a new one. Every device
    then logs the same names in the same order, as Lightning's epoch-end sync requires.
    """
    if trainer is None or trainer.world_size <= 1:  # None: unit tests, conformance kit
        return local
    while True:
        totals = _sums_across_devices(local, known, trainer, device)
        flat = totals.tolist()  # one device sync
        if flat[-1] == 0:  # no device saw a name outside `known`
            break
        names = [None] * trainer.world_size
        torch.distributed.all_gather_object(names, list(local))
        known += [name for name in dict.fromkeys(n for ns in names for n in ns)
                  if name not in known]
    return {name: ((totals[2 * i] / totals[2 * i + 1]).float(), round(flat[2 * i + 1]))
            for i, name in enumerate(known) if flat[2 * i + 1] > 0}


def _sums_across_devices(local: dict[str, tuple[torch.Tensor, int]], known: list[str],
                         trainer: pl.Trainer, device: torch.device) -> torch.Tensor:
    """[Σ mean·weight, Σ weight] for each name of `known` (0, 0 where a device lacks it),
    then the number of devices with a name outside `known`; summed over devices."""
    device = next(iter(local.values()))[0].device if local else device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    parts = []
    for name in known:
        mean, weight = local.get(name, (zero, 0))
        parts += [mean.double() * weight, zero + weight]
    parts.append(zero + any(name not in known for name in local))
    return trainer.strategy.reduce(torch.stack(parts), reduce_op="sum")


def check_finite(means: Mapping[str, torch.Tensor], stage: str, step: int,
                 objective: str = "", precision: str | None = None) -> None:
    """Stop on the first NaN or infinite mean, naming it (the loss comes first), the
    objective and the phase, with the remedies that fit: before any optimizer step (step 0)
    no learning rate is to blame, and 32-true is no remedy where the run already uses it."""
    values = torch.stack([v.float().mean() for v in means.values()])  # one device sync
    if bool(torch.isfinite(values).all()):
        return
    for name, mean in zip(means, values):
        if not torch.isfinite(mean):
            raise NonFiniteError(f"{stage}/{name} became {mean.item()} at step {step}; "
                                 f"stopping. {_non_finite_hint(stage, step, objective, precision)}")


def _non_finite_hint(stage: str, step: int, objective: str, precision: str | None) -> str:
    phase = "training" if stage == "train" else "validation"
    who = f"objective '{objective}'" if objective else "the objective"
    low_precision = precision is not None and not str(precision).startswith(("32", "64"))
    precision_hint = f"trainer.precision=32-true (this run uses {precision})"
    if step == 0:
        # Nothing has been learned yet: the model is as loaded, the data as read.
        hint = (f"In {phase}, before any optimizer step: {who} gives it on the model as "
                "loaded, so the learning rate is not the cause. Check the objective's loss on "
                "this data (prefopt.testing.check_objective runs it on a tiny model) and the "
                "data's records")
        return hint + (f", or try {precision_hint}." if low_precision else ".")
    remedies = ["a lower optimizer.lr", "gradient clipping (trainer.gradient_clip_val)"]
    if low_precision:
        remedies.append(precision_hint)
    return (f"In {phase}, with {who}, after {step} optimizer steps: try "
            f"{', '.join(remedies[:-1])} or {remedies[-1]}.")


class MetricLog:
    """Logs a module's metrics under `train/` or `val/`, the same on every device."""

    def __init__(self, check_every: int | None = None):
        """`check_every`: logged batches per finiteness read-back; None: 1 on the CPU,
        `FINITE_CHECK_EVERY` on an accelerator."""
        self.known: dict[str, list[str]] = {}  # per stage: names agreed across devices
        self.check_every = check_every
        # Means not yet checked: (names, their stacked values, stage, step, objective,
        # precision) per logged batch, oldest first.
        self._unchecked: list[tuple] = []
        # The latest training step's progress-bar metrics ("train/loss": its mean), read
        # by the progress bars at every step: they need not go through Lightning's log.
        self.bar: dict[str, torch.Tensor] = {}

    def log(self, module: pl.LightningModule, metrics: Mapping[str, torch.Tensor], stage: str,
            weights: Mapping[str, int], n_groups: int) -> None:
        # A batch may hold no example of a kind (e.g. no undesirable completion): skip the
        # metric for this batch rather than log the NaN of an empty mean.
        metrics = {k: v for k, v in metrics.items() if v.numel() > 0}
        # Means over every device, so that a NaN on one device stops all of them together
        # (one stopping alone would leave the others waiting in a collective).
        reduced = reduce_across_devices(local_means(metrics, weights, n_groups),
                                        self.known.setdefault(stage, []), module._trainer,
                                        module.device)
        objective = getattr(getattr(module, "objective", None), "config", None)
        if reduced:
            values = torch.stack([mean.float() for mean, _ in reduced.values()])
            self._unchecked.append((list(reduced), values, stage, module.global_step,
                                    getattr(objective, "name", ""),
                                    getattr(module._trainer, "precision", None)))
            every = self.check_every or (1 if values.device.type == "cpu"
                                         else FINITE_CHECK_EVERY)
            if len(self._unchecked) >= every:
                self.check()
        on_step = stage == "train"
        if on_step:
            # Updated, not replaced: a module may log a step's metrics in two parts (online
            # pairs: the rollout's, then the pairs' loss).
            self.bar.update({f"{stage}/{name}": reduced[name][0]
                             for name in PROGRESS_BAR_METRICS if name in reduced})
            if not logger_writes_this_step(module._trainer):
                return  # the loggers would not receive them; the bar reads `self.bar`
        for name, (mean, weight) in reduced.items():
            # Already the global batch's value on every device: train/ values are those of
            # the whole step, and Lightning's epoch average of val/ ones, weighted by each
            # batch's global weight, is the mean over the whole validation set. sync_dist
            # then changes nothing (equal values on every device); it only spares
            # Lightning's warning about unsynced epoch metrics.
            module.log(f"{stage}/{name}", mean, batch_size=weight, on_step=on_step,
                       on_epoch=not on_step, sync_dist=not on_step,
                       prog_bar=not on_step and name in PROGRESS_BAR_METRICS)

    @staticmethod
    def log_learning_rate(module: pl.LightningModule, lr: float) -> None:
        """`train/lr`, on the training steps the loggers write (as Lightning's
        LearningRateMonitor does)."""
        if logger_writes_this_step(module._trainer):
            module.log("train/lr", lr, on_step=True, on_epoch=False, batch_size=1)

    def check(self) -> None:
        """Raise NonFiniteError for the oldest logged batch with a non-finite mean (as
        `check_finite` words it); one read-back from the device for all of them."""
        if not self._unchecked:
            return
        unchecked, self._unchecked = self._unchecked, []
        finite = torch.stack([torch.isfinite(values).all()
                              for _, values, *_ in unchecked]).tolist()
        for ok, (names, values, stage, step, objective, precision) in zip(finite, unchecked):
            if not ok:
                check_finite(dict(zip(names, values)), stage, step, objective=objective,
                             precision=precision)
