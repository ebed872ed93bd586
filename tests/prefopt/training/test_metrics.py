"""Metric reduction and the finiteness check on one process (the two-process case is
tests/integration/test_distributed.py)."""

import pytest
import torch

from prefopt.training.metrics import (
    MetricLog,
    NonFiniteError,
    check_finite,
    local_means,
    reduce_across_devices,
)


def test_one_process_weights_per_value_scalar_and_given():
    reduced = reduce_across_devices(local_means(
        {"loss": torch.tensor(0.5), "v": torch.tensor([1.0, 2.0, 6.0]),
         "entropy": torch.tensor(2.0)}, {"entropy": 40}, 5), [], None, torch.device("cpu"))
    assert {k: (float(v), w) for k, (v, w) in reduced.items()} == {
        "loss": (0.5, 5), "v": (3.0, 3), "entropy": (2.0, 40)}


def test_check_finite_names_the_first_non_finite_metric():
    with pytest.raises(NonFiniteError, match=r"^val/b became inf at step 7; stopping"):
        check_finite({"a": torch.tensor(1.0), "b": torch.tensor([1.0, float("inf")]),
                      "c": torch.tensor(float("nan"))}, "val", 7)
    check_finite({"a": torch.tensor([1.0, -2.0])}, "val", 7)  # finite: no error


class _Recorder:
    """What MetricLog needs of a LightningModule, recording what it logs."""

    _trainer = None
    device = torch.device("cpu")
    global_step = 0

    def __init__(self):
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = (float(value), kwargs["batch_size"], kwargs["on_step"])


def test_empty_metrics_are_skipped_and_weights_follow_the_rules():
    module = _Recorder()
    MetricLog().log(module, {"loss": torch.tensor(0.5), "rewards/rejected": torch.zeros(0),
                             "x": torch.tensor([1.0, 3.0]), "entropy": torch.tensor(2.0)},
                    "train", {"entropy": 40}, 4)
    # The loss: a scalar weighted by the prompts (4); x: its 2 values; entropy: as given.
    assert module.logged == {"train/loss": (0.5, 4, True), "train/x": (2.0, 2, True),
                             "train/entropy": (2.0, 40, True)}


class _Trainer:
    """What MetricLog reads of a Trainer: one process, and whether the loggers receive
    this step's values (Lightning's `should_update_logs`)."""

    world_size, fast_dev_run, precision = 1, False, "32-true"

    def __init__(self, writes: bool):
        self._logger_connector = type("Connector", (), {"should_update_logs": writes})()


@pytest.mark.parametrize("writes", [True, False])
def test_train_steps_the_loggers_skip_record_nothing_and_the_bar_reads_every_step(writes):
    module = _Recorder()
    module._trainer = _Trainer(writes)
    metrics = {"loss": torch.tensor(0.5), "rewards/accuracies": torch.tensor([1.0, 0.0]),
               "rewards/margins": torch.tensor([2.0, 4.0])}
    log = MetricLog()
    log.log(module, metrics, "train", {}, 2)
    assert module.logged == ({"train/loss": (0.5, 2, True),
                              "train/rewards/accuracies": (0.5, 2, True),
                              "train/rewards/margins": (3.0, 2, True)} if writes else {})
    assert {k: float(v) for k, v in log.bar.items()} == {"train/loss": 0.5,
                                                         "train/rewards/accuracies": 0.5}
    # A second part of the same step without them (online pairs: the rollout's metrics)
    # keeps what the bar shows.
    log.log(module, {"reward/mean": torch.tensor(0.25)}, "train", {}, 2)
    assert set(log.bar) == {"train/loss", "train/rewards/accuracies"}
    MetricLog.log_learning_rate(module, 0.125)
    assert ("train/lr" in module.logged) == writes
    # Validation values are epoch means: every batch records all of them.
    module.logged.clear()
    MetricLog().log(module, metrics, "val", {}, 2)
    assert set(module.logged) == {"val/loss", "val/rewards/accuracies", "val/rewards/margins"}
    # A NaN is caught on a skipped step too: the check does not depend on what is logged.
    with pytest.raises(NonFiniteError, match="train/rewards/margins became nan"):
        MetricLog().log(module, {**metrics, "rewards/margins": torch.tensor(float("nan"))},
                        "train", {}, 2)


def test_non_finite_before_any_step_names_objective_and_phase_not_the_learning_rate():
    # Step 0 of validation (Lightning's sanity check): nothing was learned, the default
    # precision is already 32-true: neither a lower lr nor 32-true can help.
    with pytest.raises(NonFiniteError) as error:
        check_finite({"loss": torch.tensor(float("nan"))}, "val", 0, objective="dpo",
                     precision="32-true")
    message = str(error.value)
    assert message.startswith("val/loss became nan at step 0; stopping. In validation, before "
                              "any optimizer step: objective 'dpo'")
    assert "optimizer.lr" not in message and "32-true" not in message
    assert "prefopt.testing.check_objective" in message and "\n" not in message


@pytest.mark.parametrize("precision,suggests_32", [("32-true", False), ("bf16-mixed", True)])
def test_non_finite_after_steps_suggests_what_fits(precision, suggests_32):
    with pytest.raises(NonFiniteError) as error:
        check_finite({"loss": torch.tensor(float("inf"))}, "train", 12, objective="ipo",
                     precision=precision)
    message = str(error.value)
    assert message.startswith("train/loss became inf at step 12; stopping. In training, with "
                              "objective 'ipo', after 12 optimizer steps: try a lower "
                              "optimizer.lr")
    assert ("trainer.precision=32-true (this run uses bf16-mixed)" in message) == suggests_32


def test_batched_finiteness_checks_stop_with_the_first_bad_batchs_message():
    """Every 3rd logged batch is checked: a NaN at step 1 passes the log of step 1 and
    stops the run at the 3rd log, named as an immediate check would have named it."""
    module, log = _Recorder(), MetricLog(check_every=3)
    module.global_step = 0
    log.log(module, {"loss": torch.tensor(0.5)}, "train", {}, 2)
    module.global_step = 1
    log.log(module, {"loss": torch.tensor(0.4), "x": torch.tensor([1.0, float("nan")])},
            "train", {}, 2)
    assert module.logged["train/x"][0] != module.logged["train/x"][0]  # logged: NaN
    module.global_step = 2
    with pytest.raises(NonFiniteError, match=r"^train/x became nan at step 1; stopping"):
        log.log(module, {"loss": torch.tensor(float("inf"))}, "train", {}, 2)


def test_a_pending_check_is_made_on_demand_and_only_once():
    module, log = _Recorder(), MetricLog(check_every=10)
    module.global_step = 4
    log.log(module, {"loss": torch.tensor(float("inf"))}, "val", {}, 2)
    with pytest.raises(NonFiniteError, match=r"^val/loss became inf at step 4"):
        log.check()
    log.check()  # reported: nothing is left to check


def test_the_cpu_checks_every_batch_by_default():
    module = _Recorder()
    with pytest.raises(NonFiniteError, match=r"^train/loss became nan at step 0"):
        MetricLog().log(module, {"loss": torch.tensor(float("nan"))}, "train", {}, 2)
