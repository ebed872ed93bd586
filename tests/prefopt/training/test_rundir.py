"""The run directory's rules: one process at a time, one run per directory, a resume keeps
its run's settings, files replaced whole with their earlier versions kept."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prefopt.training import rundir
from prefopt.training.config import ConfigError

BIN = Path(sys.executable).parent
FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false", "data.synthetic.n_train=16",
        "data.synthetic.n_val=8", "data.batch_size=4", "export_policy=false"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def prefopt_train(*args, cwd):
    return subprocess.run([str(BIN / "prefopt-train"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("prefopt-train: error:")]
    return line


def test_a_second_run_into_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    """This process holds the run directory, as a running prefopt-train does: another
    prefopt-train into it exits at once naming our pid and writes nothing there."""
    out = tmp_path / "run"
    with rundir.lock(out):
        result = prefopt_train(*FAST, f"output_dir={out}", cwd=tmp_path)
        line = one_line_error(result)
        assert f"output_dir={out} is in use by another prefopt-train (pid {os.getpid()})" in line
        assert files(out) == {} and not any(out.iterdir())
    with rundir.lock(out):  # released on leaving the block: taken again at once
        pass


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with rundir.lock(tmp_path / "run"):
        with pytest.raises(rundir.RunDirError, match=rf"pid {os.getpid()}\)"):
            with rundir.lock(tmp_path / "run"):
                pass


def test_a_new_run_into_a_run_directory_is_refused(tmp_path):
    """Without ckpt_path, a directory holding a run is not written into (today's code
    mixed the two runs' files, its config.yaml first)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 7\n")
    (out / "metrics.csv").write_text("epoch,step\n0,0\n")
    before = files(out)
    line = one_line_error(prefopt_train(*FAST, f"output_dir={out}", cwd=tmp_path))
    assert (f"output_dir={out} already holds a run (config.yaml, metrics.csv); resume it with "
            f"`prefopt-train output_dir={out} ckpt_path=last`") in line
    assert files(out) == before


def _saved_run(compose, out: Path, *overrides: str) -> None:
    """A run directory's config.yaml, as prefopt-train writes it."""
    out.mkdir(parents=True)
    cfg = compose(f"output_dir={out}", *overrides)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def test_resume_takes_the_run_config_with_the_command_line_on_top(compose, tmp_path):
    out = tmp_path / "run"
    _saved_run(compose, out, "model=hf", "model.name_or_path=/models/mine", "seed=3",
               "objective=ipo", "objective.beta=0.25")
    argv = [f"output_dir={out}", "ckpt_path=last", "trainer.max_steps=900",
            "logger=tensorboard", "hydra.job.chdir=false"]
    cfg = rundir.resume_config(compose(*argv[:-1]), argv)
    assert cfg.model.name_or_path == "/models/mine" and cfg.seed == 3
    assert cfg.objective.name == "ipo" and cfg.objective.beta == 0.25
    assert cfg.trainer.max_steps == 900 and cfg.ckpt_path == "last"
    assert set(cfg.logger) == {"csv", "tensorboard"}
    assert cfg.logger.tensorboard.save_dir == str(out)
    rundir.check_resume(cfg, out)  # every change is one a resume may make

    # Without a config.yaml there (a checkpoint starting a new directory): the command line.
    other = compose(f"output_dir={tmp_path / 'new'}", "ckpt_path=/x.ckpt")
    assert rundir.resume_config(other, [f"output_dir={tmp_path / 'new'}"]) is other


@pytest.mark.parametrize("overrides,named", [
    (["optimizer.lr=0.5"], "optimizer.lr (0.001 in the run, 0.5 now)"),
    (["model=tiny"], "model.name_or_path (/models/mine in the run, None now)"),
    (["seed=4"], "seed (3 in the run, 4 now)"),
    (["data.batch_size=2", "scheduler=constant"], "data.batch_size (32 in the run, 2 now)"),
    (["objective.beta=0.5"], "objective.beta (0.1 in the run, 0.5 now)"),
    (["objective=ipo"], "change objective (dpo in the run, ipo now);"),
])
def test_resume_refuses_to_change_what_the_run_was_started_with(compose, tmp_path, overrides,
                                                                  named):
    out = tmp_path / "run"
    _saved_run(compose, out, "model=hf", "model.name_or_path=/models/mine", "seed=3")
    argv = [f"output_dir={out}", "ckpt_path=last", *overrides]
    cfg = rundir.resume_config(compose(*argv), argv)
    with pytest.raises(ConfigError, match="ckpt_path=last: a resume cannot change") as error:
        rundir.check_resume(cfg, out)
    assert named in str(error.value)
    assert "drop these overrides, or start a new run in another output_dir" in str(error.value)


def test_resume_refuses_a_config_that_is_not_the_run_s(compose, tmp_path):
    """train(cfg) called with a composed default config and ckpt_path (no CLI merge)."""
    out = tmp_path / "run"
    _saved_run(compose, out, "model=hf", "model.name_or_path=/models/mine")
    with pytest.raises(ConfigError, match=r"model.name_or_path \(/models/mine in the run"):
        rundir.check_resume(compose(f"output_dir={out}", "ckpt_path=last"), out)


def test_what_a_resume_may_change():
    assert rundir.resumable("trainer.max_steps") and rundir.resumable("logger.wandb.project")
    assert rundir.resumable("ckpt_path") and rundir.resumable("output_dir")
    assert not rundir.resumable("trainer.precision") and not rundir.resumable("optimizer.lr")
    assert not rundir.resumable("trainer.max_steps_extra")  # a prefix, not a key


def test_earlier_versions_are_kept_never_overwritten(tmp_path):
    metrics = tmp_path / "metrics.csv"
    for text in ("first\n", "second\n", "third\n"):
        metrics.write_text(text)
        rundir.set_aside(metrics)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "metrics.before-resume.csv": "first\n", "metrics.before-resume-2.csv": "second\n",
        "metrics.before-resume-3.csv": "third\n"}

    config = tmp_path / "config.yaml"
    undo_new = rundir.write_keeping(config, "a\n")  # did not exist
    undo_same = rundir.write_keeping(config, "a\n")  # same content: untouched
    assert sorted(p.name for p in tmp_path.glob("config*")) == ["config.yaml"]
    undo_changed = rundir.write_keeping(config, "b\n")
    assert config.read_text() == "b\n"
    assert (tmp_path / "config.before-resume.yaml").read_text() == "a\n"
    undo_changed()
    undo_same()
    assert config.read_text() == "a\n" and not (tmp_path / "config.before-resume.yaml").exists()
    undo_new()
    assert not config.exists()


def test_a_run_that_stopped_before_its_first_checkpoint_is_named_so(tmp_path):
    """config.yaml written, then the first validation failed (say, a bad max_length): a
    new run there is refused, and the message says there is nothing to resume instead of
    sending the user to a resume that fails for want of a checkpoint."""
    from prefopt.training.rundir import RunDirError, refuse_existing

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 7\n")
    with pytest.raises(RunDirError, match=r"holds a run that stopped before its first "
                                          r"checkpoint \(config.yaml; no checkpoints/last"
                                          r"\.ckpt\): there is nothing to resume; choose "
                                          r"another output_dir, or delete this one"):
        refuse_existing(out)
    assert (out / "config.yaml").read_text() == "seed: 7\n"
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirError, match=r"already holds a run \(config.yaml, checkpoints\); "
                                          r"resume it with"):
        refuse_existing(out)
