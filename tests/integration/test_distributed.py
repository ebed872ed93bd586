"""Distributed training: two CPU processes (gloo) against one process on the same batch.

The two-process tests run this file as a script, once per rank (a subprocess, not
torch.multiprocessing: pytest imports test files under names a spawned child could not
import). Each rank builds the same tiny models from the same seed, takes half of a global
batch of synthetic records, and computes the loss, DDP-averaged gradients and the metrics
the module logs; the test then computes the same on the whole batch in one process, with
no distributed code involved, and compares.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from prefopt.training.metrics import local_means, reduce_across_devices

HERE = Path(__file__).resolve()
BIN = Path(sys.executable).parent
WORLD = 2
RECORDS = 8  # the global batch: 4 records on each rank
OBJECTIVES = ("dpo", "kto")
RTOL = 1e-5


# -- what each rank and the single process compute --------------------------------------

def _objective(name: str):
    from prefopt.plugins.dpo import DPO
    from prefopt.plugins.kto import KTO

    cls = {"dpo": DPO, "kto": KTO}[name]
    return cls(cls.Config(name=name))


def _module(name: str):
    """A PreferenceModule on the tiny policy (moved off its reference, so rewards are not
    all 0) and its reference, identical in every process: built from fixed seeds."""
    from prefopt import testing
    from prefopt.training.module import PreferenceModule
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    objective = _objective(name)
    reference, template = testing._models(reward_head=False)
    return PreferenceModule(copy.deepcopy(template), reference, objective, OptimizerConfig(),
                            SchedulerConfig(), logprob_impl="torch")


def _halves(name: str) -> list[dict[str, torch.Tensor]]:
    """The global batch as two rank batches of 4 records each, collated as prefopt-train
    collates a batch (KTO: with its mismatched rows, formed inside each rank's batch), all
    padded to one width."""
    from prefopt import testing
    from prefopt.data.collate import collate_groups
    from prefopt.data.datamodule import DataConfig, PreferenceDataModule
    from prefopt.data.synthetic import SyntheticConfig

    objective = _objective(name)
    mismatched = objective.needs().mismatched_pairs
    tokenizer = testing._tokenizer()
    data = DataConfig(batch_size=RECORDS, shuffle=False,
                      synthetic=SyntheticConfig(n_train=RECORDS, n_val=2, seed=1))
    datamodule = PreferenceDataModule(data, tokenizer, fmt=objective.batch_format.value,
                                      mismatched=mismatched, seed=1)
    datamodule.setup("fit")
    groups = datamodule.groups["train"]
    half = len(groups) // WORLD
    batches = [collate_groups(groups[r * half:(r + 1) * half], tokenizer.pad_token_id,
                              mismatched=mismatched) for r in range(WORLD)]
    width = max(b["input_ids"].shape[1] for b in batches)
    return [_padded(b, width, tokenizer.pad_token_id) for b in batches]


def _padded(batch, width, pad_id):
    out = dict(batch)
    extra = width - batch["input_ids"].shape[1]
    for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("completion_mask", False)):
        out[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)
    return out


def _whole(halves):
    """One batch holding the rows of both halves: prompts renumbered, per-prompt fields
    (labels, margins) appended. Its mismatched rows are those of the halves, so the KL
    reference point of one process on it is what the two ranks estimate together."""
    parts, offset = [], 0
    for batch in halves:
        parts.append({**batch, "group": batch["group"] + offset})
        offset += int(batch["group"].max()) + 1
    return {key: torch.cat([part[key] for part in parts]) for key in halves[0]}


class _Loss(torch.nn.Module):
    """The training loss of a batch, as a module DistributedDataParallel can wrap."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, batch):
        inputs, _ = self.module.loss_inputs(batch)
        return self.module.objective.loss(inputs).loss


def _recording(module) -> dict:
    """Replace module.log by a recorder: {name: (value, batch_size)}."""
    logged = {}

    def log(name, value, batch_size, **_):
        logged[name] = (float(value), batch_size)

    module.log = log
    return logged


def _grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.policy.named_parameters() if p.requires_grad}


def _one_process(name: str) -> dict:
    """Loss, gradients and logged val metrics of one process on the whole batch."""
    module = _module(name)
    batch = _whole(_halves(name))
    loss = _Loss(module)(batch)
    loss.backward()
    logged = _recording(module)
    with torch.no_grad():
        module._step(batch, "val")
    return {"loss": loss.item(), "grads": _grads(module), "logged": logged}


# -- the ranks ---------------------------------------------------------------------------

def _stand_in_trainer():
    """What PreferenceModule reads of its Trainer: world_size, global_step and
    strategy.reduce, here Lightning's own DDPStrategy.reduce on the process group this
    script started. A real Trainer would also bring its loops, sampler and loggers, and
    the split of the global batch would be Lightning's choice rather than this test's;
    the end-to-end test below runs the real thing."""
    from pytorch_lightning.strategies import DDPStrategy

    return types.SimpleNamespace(world_size=WORLD, global_step=0, strategy=DDPStrategy())


def _rank(rank: int, out: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from prefopt.training.metrics import NonFiniteError

    torch.set_num_threads(1)
    # A file rendezvous: no TCP port to choose, which could clash with another run.
    dist.init_process_group("gloo", init_method=f"file://{out / 'rendezvous'}", rank=rank,
                            world_size=WORLD)
    results = {}
    for name in OBJECTIVES:
        module = _module(name)
        module._trainer = _stand_in_trainer()
        batch = _halves(name)[rank]
        ddp = DistributedDataParallel(_Loss(module))
        loss = ddp(batch)
        loss.backward()  # DDP averages the gradients over the ranks
        logged = _recording(module)
        with torch.no_grad():
            module._step(batch, "val")
        results[name] = {"loss": loss.item(), "grads": _grads(module), "logged": logged}

    # Metric names and weights that differ between ranks, values derived by hand in the test.
    module = _module("dpo")
    module._trainer = _stand_in_trainer()
    if rank == 0:
        metrics = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor(5.0)}
    else:
        metrics = {"a": torch.tensor([4.0]), "c": torch.tensor([7.0, 9.0]),
                   "d": torch.tensor(3.0)}
    reduced = reduce_across_devices(local_means(metrics, {"d": 6}, 3 + rank), [],
                                    module._trainer, module.device)
    results["reduced"] = {k: (float(v), w) for k, (v, w) in reduced.items()}

    # A NaN on rank 1 only: every rank must stop, none left waiting in a collective.
    logged = _recording(module)
    loss = torch.tensor(float("nan") if rank == 1 else 0.5)
    try:
        module._log({"loss": loss, "x": torch.tensor([1.0, 2.0])}, "train", {}, 2)
        results["non_finite"] = None
    except NonFiniteError as exc:
        results["non_finite"] = str(exc)
    torch.save(results, out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [out / f"rank{rank}.log" for rank in range(WORLD)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, str(HERE), str(rank), str(out)],
                                          env=env, stdout=f, stderr=subprocess.STDOUT))
    # A rank that fails leaves the other waiting in a collective: stop it too.
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
            for p in procs:
                p.kill()
        time.sleep(0.1)
    failed = [f"rank {r} (exit {p.returncode}):\n{log.read_text()[-3000:]}"
              for r, (p, log) in enumerate(zip(procs, logs)) if p.returncode != 0]
    assert not failed, "\n".join(failed)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# -- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", OBJECTIVES)
def test_two_ranks_match_one_process_on_the_global_batch(ranks, name):
    expected = _one_process(name)
    got = [r[name] for r in ranks]

    # The loss of DDP training: each rank's mean over its half, averaged over the ranks.
    assert sum(g["loss"] for g in got) / WORLD == pytest.approx(expected["loss"], rel=RTOL)
    assert got[0]["loss"] != pytest.approx(got[1]["loss"], rel=1e-3)  # the halves differ

    for g in got:
        assert g["grads"].keys() == expected["grads"].keys()
        for param, grad in expected["grads"].items():
            scale = float(grad.abs().max())
            assert scale > 0, param
            torch.testing.assert_close(g["grads"][param], grad, rtol=RTOL, atol=RTOL * scale,
                                       msg=lambda m: f"{param}: {m}")

    # Logged metrics: the whole batch's, on every rank, with the whole batch's weight.
    # KTO's rewards/margins is a difference of two class means, which no weighted mean of
    # per-device values reproduces; it is a mean of the devices' margins (checked finite).
    inexact = {"val/rewards/margins"} if name == "kto" else set()
    for g in got:
        assert g["logged"].keys() == expected["logged"].keys()
        for key, (value, weight) in expected["logged"].items():
            if key in inexact:
                assert g["logged"][key][0] == g["logged"][key][0]  # not NaN
                continue
            assert g["logged"][key][0] == pytest.approx(value, rel=RTOL, abs=1e-6), key
            assert g["logged"][key][1] == weight, key
    if name == "kto":  # z0, compared above, is the whole batch's; 3 + 1 desirable examples
        assert expected["logged"]["val/kto/z0"][0] > 0
        assert [g["logged"]["val/rewards/chosen"][1] for g in got] == [4, 4]


def test_metrics_with_different_names_and_weights_on_each_rank(ranks):
    # rank 0: a=[1, 2], b=5 (scalar, weight: its 3 prompts);
    # rank 1: a=[4], c=[7, 9], d=3 (weight given: 6).
    expected = {"a": ((1 + 2 + 4) / 3, 3), "b": (5.0, 3), "c": (8.0, 2), "d": (3.0, 6)}
    for r in ranks:  # the same names in the same order on every rank: Lightning syncs
        assert list(r["reduced"]) == ["a", "b", "c", "d"]  # epoch metrics in log order
        for key, (value, weight) in expected.items():
            assert r["reduced"][key][0] == pytest.approx(value, rel=1e-6), key
            assert r["reduced"][key][1] == weight, key


def test_non_finite_on_one_rank_stops_every_rank(ranks):
    for r in ranks:
        assert r["non_finite"] is not None and r["non_finite"].startswith(
            "train/loss became nan at step 0")


# -- strategies through the trainer group ------------------------------------------------

def test_strategy_options_inherit_the_default_trainer(compose):
    default = compose().trainer
    for option, strategy in (("ddp", "ddp"), ("fsdp", "fsdp"),
                             ("deepspeed", "deepspeed_stage_2")):
        trainer = compose(f"trainer={option}", "trainer.max_steps=7").trainer
        assert trainer.strategy == strategy
        assert trainer.max_steps == 7 and trainer.precision == default.precision
        assert trainer.val_check_interval == default.val_check_interval
    assert compose("trainer=fsdp").trainer.gradient_clip_val is None  # Lightning: no norm
    assert compose("trainer=ddp").trainer.gradient_clip_val == default.gradient_clip_val


def test_fsdp_on_cpu_is_refused_by_lightning(compose):
    import pytorch_lightning as pl

    trainer = {**compose("trainer=fsdp").trainer, "accelerator": "cpu", "devices": 2}
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(**trainer, logger=False)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="Lightning runs FSDP on CUDA only (it refuses accelerator=cpu)")
@pytest.mark.gpu
@pytest.mark.slow
def test_fsdp_run_on_gpu(tmp_path):
    devices = torch.cuda.device_count()
    result = subprocess.run(
        [str(BIN / "prefopt-train"), "trainer=fsdp", f"trainer.devices={devices}",
         *_RUN, f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "summary.json").exists()


def test_deepspeed_without_the_package_is_a_clear_error(compose):
    import importlib.util

    import pytorch_lightning as pl

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    trainer = {**compose("trainer=deepspeed").trainer, "accelerator": "cpu"}
    with pytest.raises(Exception, match="must have DeepSpeed installed"):
        pl.Trainer(**trainer, logger=False)


def test_export_with_sharded_parameters_is_refused(compose, monkeypatch, tmp_path):
    """FSDP cannot run here (CPU), so the refusal is checked on a Trainer stand-in whose
    strategy shards parameters as DeepSpeed ZeRO-3 does."""
    from prefopt.training import train
    from prefopt.training.config import ConfigError

    class Trainer:
        def __init__(self, **_):
            self.strategy = types.SimpleNamespace(zero_stage_3=True)

    monkeypatch.setattr(train.pl, "Trainer", Trainer)
    module = types.SimpleNamespace(
        objective=types.SimpleNamespace(monitor=("rewards/accuracies", "max")),
        automatic_optimization=True)
    cfg = compose("trainer=deepspeed", "trainer.strategy=deepspeed_stage_3")
    with pytest.raises(ConfigError, match="cannot save policy/ from sharded"):
        train._fit(cfg, tmp_path, module, None, None)


# -- end to end: prefopt-train with Lightning's DDP on two CPU processes ----------------

_RUN = ["data.synthetic.n_train=300", "data.synthetic.n_val=32", "data.batch_size=8",
        "trainer.max_steps=20", "trainer.val_check_interval=10", "export_policy=false",
        "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_prefopt_train_ddp_on_two_cpu_processes(compose, tmp_path):
    run = tmp_path / "run"
    result = subprocess.run(
        [str(BIN / "prefopt-train"), "trainer=ddp", "trainer.devices=2",
         "trainer.accelerator=cpu", *_RUN, f"output_dir={run}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in result.stderr + result.stdout
    assert "Starting with 2 processes" in result.stderr + result.stdout
    # Rank 0 alone reports and writes the run's files (Lightning's relaunch of rank 1
    # wrote into the same output_dir).
    assert result.stdout.count("Run directory:") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 20
    for name in ("curves.png", "checkpoints/last.ckpt", "metrics.csv"):
        assert (run / name).exists(), name
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val/loss"]] == [0, 9, 19, 20]
    assert any(r["train/loss"] for r in rows)

    # The final validation of the two processes equals one process validating the saved
    # final model on the whole validation set (32 records: 16 per rank, none repeated).
    import pytorch_lightning as pl

    from prefopt.training.train import build

    cfg = compose(*_RUN)
    module, datamodule, _ = build(cfg)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    module.load_state_dict(state)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    expected = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    assert summary["end"].keys() == expected.keys()
    for key, value in expected.items():
        assert summary["end"][key] == pytest.approx(float(value), rel=RTOL, abs=1e-6), key
    assert summary["end"]["val/kl"] != pytest.approx(0.0, abs=1e-4)  # it has trained


if __name__ == "__main__":  # one rank of the two-process tests: <rank> <output folder>
    _rank(int(sys.argv[1]), Path(sys.argv[2]))
