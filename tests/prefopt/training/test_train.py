"""One run's build and bookkeeping: which module the format table picks, refusals, and the
metrics a resume keeps (whole runs: tests/integration/)."""

import csv
from pathlib import Path

import pytest
import torch

from prefopt.data.datamodule import PreferenceDataModule
from prefopt.data.prompts import PromptDataModule
from prefopt.online.module import OnlineModule
from prefopt.plugins.dpo import DPO
from prefopt.registry import PluginError
from prefopt.training import train
from prefopt.training.config import ConfigError
from prefopt.training.module import PreferenceModule


def test_the_format_table_picks_the_module(compose):
    module, datamodule, _ = train.build(compose("objective=dpo"))
    assert type(module) is PreferenceModule and isinstance(datamodule, PreferenceDataModule)
    assert module.reference is not None and module.reference is not module.policy
    module, datamodule, _ = train.build(compose("objective=reinforce"))
    assert type(module) is OnlineModule and isinstance(datamodule, PromptDataModule)


def test_an_objective_on_prompts_must_be_online(compose):
    from prefopt.objective import BatchFormat

    class PromptDPO(DPO):
        batch_format = BatchFormat.PROMPTS

    with pytest.raises(PluginError, match=r"objective 'odd' consumes prompts, which only "
                                          r"online objectives .* can"):
        train._build_online(compose("objective=dpo"), PromptDPO(DPO.Config(name="odd")))


def test_resume_needs_a_checkpoint(compose, tmp_path):
    cfg = compose("ckpt_path=last")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=last: no checkpoint at .*last.ckpt"):
        train._resume_checkpoint(cfg, tmp_path)


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_metrics_before_the_checkpoint_are_kept_and_prepended(tmp_path):
    """A checkpoint at step 4: training rows before it and validation rows up to it stay;
    the rest will be logged again by the resumed run."""
    rows = [{"epoch": "0", "step": "0", "train/loss": "", "val/loss": "0.7"},
            {"epoch": "0", "step": "3", "train/loss": "0.6", "val/loss": ""},
            {"epoch": "0", "step": "4", "train/loss": "0.5", "val/loss": ""},
            {"epoch": "0", "step": "4", "train/loss": "", "val/loss": "0.55"},
            {"epoch": "0", "step": "5", "train/loss": "0.4", "val/loss": ""}]
    _write_csv(tmp_path / "metrics.csv", rows)
    before = (tmp_path / "metrics.csv").read_bytes()
    kept = train._metrics_before(tmp_path, 4)
    assert kept == [rows[0], rows[1], rows[3]]
    assert (tmp_path / "metrics.csv").read_bytes() == before  # read only: set aside later
    assert train._start_metrics(kept) == {"val/loss": 0.7}

    # The resumed run's logger writes a new file, with a column the first run lacked.
    _write_csv(tmp_path / "metrics.csv", [{"epoch": "0", "step": "4", "train/loss": "0.5",
                                            "train/lr": "0.1"}])
    train._prepend_rows(tmp_path / "metrics.csv", kept)
    with open(tmp_path / "metrics.csv", newline="") as f:
        merged = list(csv.DictReader(f))
    assert list(merged[0]) == ["epoch", "step", "train/loss", "train/lr", "val/loss"]
    assert [(r["step"], r["train/loss"], r["val/loss"], r["train/lr"]) for r in merged] == [
        ("0", "", "0.7", ""), ("3", "0.6", "", ""), ("4", "", "0.55", ""),
        ("4", "0.5", "", "0.1")]


def test_a_checkpoint_is_checked_before_the_run_is_touched(compose, tmp_path):
    """A resume refuses, with a ConfigError naming it, a checkpoint that cannot be read or
    does not hold this run's model, before writing anything (Lightning's own load comes
    after the run's files would have been replaced, and ends in a traceback)."""
    module, _, _ = train.build(compose())
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 7, "state_dict": module.state_dict()}, path)
    cfg = compose("ckpt_path=last")
    assert train._checkpoint_step(cfg, path, module) == 7

    path.write_bytes(path.read_bytes()[:4096])  # cut short
    with pytest.raises(ConfigError, match=rf"ckpt_path=last: {path} is not a readable "
                                          r"checkpoint \(.*\); resume from another"):
        train._checkpoint_step(cfg, path, module)
    # The newest other checkpoint of the run is named as the one to resume from.
    older = tmp_path / "best-step2.ckpt"
    older.write_bytes(b"x")
    with pytest.raises(ConfigError, match=rf"resume from another checkpoint of the run: "
                                          rf"ckpt_path={older}$"):
        train._checkpoint_step(cfg, path, module)
    older.unlink()

    wider, _, _ = train.build(compose("model.tiny.hidden_size=32",
                                      "model.tiny.intermediate_size=64"))
    torch.save({"global_step": 7, "state_dict": wider.state_dict()}, path)
    with pytest.raises(ConfigError, match=r"is not a checkpoint of this run's model \(policy\..* "
                                          r"has shape \[103, 32\] there, \[103, 64\] in this "
                                          r"run's model\)"):
        train._checkpoint_step(cfg, path, module)
    with pytest.raises(ConfigError, match="is a directory"):
        train._checkpoint_step(cfg, tmp_path, module)


def test_a_cache_of_sums_cannot_serve_per_token_reference_log_probs():
    """Refused before any data is read, in one line, rather than by the module mid-build."""
    from prefopt.objective import Needs
    from prefopt.training.config import ConfigError

    class PerToken(DPO):
        def needs(self):
            return Needs(token_logps=True)

    objective = PerToken(DPO.Config(name="per_token"))
    with pytest.raises(ConfigError, match=r"reference=cached cannot serve objective "
                                          r"'per_token': it reads per-token reference"):
        train._check_cacheable(objective, objective.needs())


def test_an_output_dir_that_cannot_be_written_is_one_config_error(compose, fast_overrides,
                                                                  tmp_path, monkeypatch):
    import pathlib

    locked = tmp_path / "readonly"
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # a read-only folder, whoever runs the test (root too)
        if str(self).startswith(str(locked)):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    out = locked / "run"
    with pytest.raises(ConfigError, match=rf"^output_dir={out}: the run cannot write there "
                                          r"\(Permission denied\); choose a folder"):
        train.train(compose(*fast_overrides, f"output_dir={out}"))


def test_an_output_dir_under_a_file_is_one_config_error(compose, fast_overrides, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "run"
    with pytest.raises(ConfigError, match=rf"^output_dir={out}: the run cannot write there"):
        train.train(compose(*fast_overrides, f"output_dir={out}"))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_learning_rate_of_zero_warns_and_a_negative_one_is_refused(compose, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="prefopt"):
        train.check_settings(compose("optimizer.lr=0"))
    assert "optimizer.lr=0: the policy's weights will not change during this run" in caplog.text
    with pytest.raises(ConfigError, match=r"^optimizer.lr=-0.1: a learning rate must be >= 0"):
        train.check_settings(compose("optimizer.lr=-0.1"))


def test_a_run_logs_throughput_and_samples_and_reports_its_runtime(compose, fast_overrides,
                                                                    tmp_path):
    """perf/* every step; runtime and mean tokens/s in summary.json; the policy's answers to
    the first validation prompts at every validation step (0 before training, then 2)."""
    import json

    from prefopt.data.datamodule import load_splits

    cfg = compose(*fast_overrides)
    train.train(cfg)
    run = tmp_path / "run"
    with open(run / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["perf/tokens_per_sec"]]
    assert [int(r["step"]) for r in rows] == [0, 1]  # logged at every step
    assert all(float(r["perf/tokens_per_sec"]) > 0 and 0 <= float(r["perf/padding"]) < 1
               for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["runtime_s"] > summary["train_seconds"] > 0
    # Two steps of 4 pairs: 16 rows, each with at least its prompt's tokens and one more.
    assert summary["train_tokens"] >= 16 * 2
    assert summary["tokens_per_sec"] == pytest.approx(
        summary["train_tokens"] / summary["train_seconds"])
    val = load_splits(train.OmegaConf.to_object(cfg.data), "pairwise", cfg.seed)["val"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [
        (step, record.prompt) for step in (0, 2) for record in val[:4]]
    assert all(isinstance(s["completion"], str) for s in samples)


def _run_summary_and_metrics(cfg):
    import json

    train.train(cfg)
    run = Path(cfg.output_dir)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return json.loads((run / "summary.json").read_text()), rows


def test_reused_reference_log_probs_train_the_same_run_with_fewer_forwards(compose,
                                                                           fast_overrides,
                                                                           tmp_path):
    """20 steps of 4 pairs over 32 records (8 batches an epoch): the first epoch's 64
    rows are scored, the 12 later steps' 96 rows reused; the 16 held-out rows are scored
    at the first validation and reused at the other three (the start, steps 10 and 20, the
    end). Every logged value equals that of the run that scores every row again."""
    overrides = [*fast_overrides, "trainer.max_steps=20", "trainer.val_check_interval=10",
                 "samples.count=0", "export_policy=false"]
    reused, rows = _run_summary_and_metrics(
        compose(*overrides, f"output_dir={tmp_path / 'reused'}"))
    assert reused["reference_rows"] == {"computed": 64 + 16, "reused": 12 * 8 + 3 * 16}
    scored, scored_rows = _run_summary_and_metrics(
        compose(*overrides, "reference_reuse=false", f"output_dir={tmp_path / 'scored'}"))
    assert "reference_rows" not in scored
    assert reused["end"] == pytest.approx(scored["end"], rel=1e-6, abs=1e-6)
    values = [{k: v for k, v in r.items() if v and not k.startswith("perf/")} for r in rows]
    expected = [{k: v for k, v in r.items() if v and not k.startswith("perf/")}
                for r in scored_rows]
    assert [set(r) for r in values] == [set(r) for r in expected]
    for got, want in zip(values, expected):
        assert {k: float(v) for k, v in got.items()} == pytest.approx(
            {k: float(v) for k, v in want.items()}, rel=1e-5, abs=1e-6)


def test_no_reference_reuse_for_per_token_values_or_a_single_epoch(compose, fast_overrides,
                                                                     tmp_path):
    from prefopt.objective import Needs
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    class PerToken(DPO):
        def needs(self):
            return Needs(token_logps=True)

    def module(objective):
        return PreferenceModule(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), objective,
                                OptimizerConfig(), SchedulerConfig())

    assert module(PerToken(DPO.Config(name="per_token"))).reference_memo is None
    assert module(DPO(DPO.Config())).reference_memo is not None
    # Two steps of one 8-batch epoch: nothing comes again in training, so its rows do not
    # go through the memo; the held-out rows are scored at the first validation and reused
    # at the two after it.
    summary, _ = _run_summary_and_metrics(compose(*fast_overrides, "samples.count=0",
                                                  "export_policy=false"))
    assert summary["reference_rows"] == {"computed": 16, "reused": 2 * 16}


def test_row_hashes_stay_on_the_host_when_a_batch_moves_to_the_device():
    """The memo looks the rows up on the host: moving them would cost a sync per step."""
    from prefopt.data.collate import ROW_HASHES
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    module = PreferenceModule(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), DPO(DPO.Config()),
                              OptimizerConfig(), SchedulerConfig())
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long),
             ROW_HASHES: torch.tensor([[1, 2], [3, 4]])}
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["input_ids"].device.type == "meta"
    assert moved[ROW_HASHES].device.type == "cpu" and moved[ROW_HASHES].tolist() == [[1, 2],
                                                                                      [3, 4]]
