"""Throughput: a step's non-padding tokens over its wall time, its padding share, and the
run's mean over training-step time only."""

import pytest
import torch

from prefopt.training import throughput
from prefopt.training.throughput import Throughput


class _Module:
    def __init__(self):
        self.logged = {}

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def _batch(lengths, width):
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return {"attention_mask": mask, "input_ids": torch.zeros_like(mask)}


def test_tokens_per_second_padding_and_the_mean(monkeypatch):
    clock = iter([10.0, 10.5, 11.5, 20.0, 20.25])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    callback, module = Throughput(), _Module()

    callback.on_train_batch_start(None, module, _batch([3, 5], 8), 0)  # t = 10
    callback.on_train_batch_end(None, module, None, _batch([3, 5], 8), 0)  # t = 10.5
    # 8 tokens in 0.5 s; 16 slots, 8 of them padding.
    assert module.logged == {"perf/tokens_per_sec": pytest.approx(16.0),
                             "perf/padding": pytest.approx(0.5)}
    # The next step runs from the end of this one: data loading counts.
    callback.on_train_batch_start(None, module, _batch([4, 4, 4], 4), 1)
    callback.on_train_batch_end(None, module, None, _batch([4, 4, 4], 4), 1)  # t = 11.5
    assert module.logged == {"perf/tokens_per_sec": pytest.approx(12.0),
                             "perf/padding": pytest.approx(0.0)}
    # A validation in between does not count as training time.
    callback.on_validation_start(None, module)
    callback.on_train_batch_start(None, module, _batch([1], 2), 2)  # t = 20
    callback.on_train_batch_end(None, module, None, _batch([1], 2), 2)  # t = 20.25
    assert module.logged["perf/tokens_per_sec"] == pytest.approx(4.0)
    assert callback.totals() == {"train_tokens": 8 + 12 + 1,
                                 "train_seconds": pytest.approx(0.5 + 1.0 + 0.25),
                                 "tokens_per_sec": pytest.approx(21 / 1.75)}


class _Trainer:
    def __init__(self, writes):
        self._writes = iter(writes)
        self.fast_dev_run = False

    @property
    def _logger_connector(self):
        return type("Connector", (), {"should_update_logs": next(self._writes)})()


def test_steps_the_loggers_skip_add_to_the_next_logged_window(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    callback, module = Throughput(), _Module()
    trainer = _Trainer([False, False, True])
    callback.on_train_batch_start(trainer, module, _batch([2, 2], 4), 0)  # t = 0
    callback.on_train_batch_end(trainer, module, None, _batch([2, 2], 4), 0)  # t = 1
    callback.on_train_batch_end(trainer, module, None, _batch([4], 4), 1)  # t = 3
    assert module.logged == {}  # not a step the loggers receive
    callback.on_train_batch_end(trainer, module, None, _batch([1, 1], 2), 2)  # t = 4
    # The window: 4 + 4 + 2 = 10 tokens in 4 s, of 8 + 4 + 4 = 16 slots.
    assert module.logged == {"perf/tokens_per_sec": pytest.approx(2.5),
                             "perf/padding": pytest.approx(6 / 16)}
    assert callback.totals()["train_tokens"] == 10


def test_prompt_batches_log_nothing():
    callback, module = Throughput(), _Module()
    callback.on_train_batch_start(None, module, {"prompts": ["a"]}, 0)
    callback.on_train_batch_end(None, module, None, {"prompts": ["a"]}, 0)
    assert module.logged == {} and callback.totals()["train_tokens"] == 0
