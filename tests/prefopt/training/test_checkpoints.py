"""Checkpoints a resume can trust: last.ckpt at every validation, whole or not written."""

import builtins
import errno
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from prefopt.training.checkpoints import AtomicCheckpointIO

LIMIT = 1000  # bytes a dying write gets onto the disk before "No space left on device"


def _dies_midway(real_save):
    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:LIMIT])
        raise OSError(errno.ENOSPC, "No space left on device")
    return save


def test_a_checkpoint_write_that_dies_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"global_step": 1, "w": torch.arange(4000.0)}, path)
    before = path.read_bytes()
    assert len(before) > LIMIT

    monkeypatch.setattr(torch, "save", _dies_midway(torch.save))
    with pytest.raises(OSError, match="No space left on device"):
        io_plugin.save_checkpoint({"global_step": 2, "w": torch.zeros(4000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left

    io_plugin.save_checkpoint({"global_step": 2, "w": torch.zeros(4000)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


class _FullDisk:
    """A file on a disk that fills up after LIMIT bytes."""

    def __init__(self, f):
        self._f, self._written = f, 0

    def write(self, data):
        if self._written + len(data) > LIMIT:
            self._f.write(bytes(data[:LIMIT - self._written]))
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self._written += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_run_whose_disk_fills_keeps_its_last_checkpoint(compose, fast_overrides, tmp_path,
                                                           monkeypatch):
    """A resumed run's every write of last.ckpt dies midway (the checkpoints' disk is full;
    the system's temporary folder, on another filesystem as /dev/shm usually is, is not):
    the last.ckpt of the run before survives whole and loadable. (Lightning's own IO
    staged the file in the temporary folder and copied it over the previous one.)"""
    from prefopt.training.train import train

    out = tmp_path / "run"
    run = [*fast_overrides, "export_policy=false", f"output_dir={out}"]
    train(compose(*run))
    last = out / "checkpoints" / "last.ckpt"
    before = _sha(last)
    assert torch.load(last, weights_only=False)["global_step"] == 2

    if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev:
        monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp(dir="/dev/shm"))
    monkeypatch.setattr(shutil, "_USE_CP_SENDFILE", False)  # copies go through write()
    real_open = builtins.open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, Path)) and "last.ckpt" in os.fspath(file) and (
                "w" in mode or "a" in mode):
            return _FullDisk(f)
        return f

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    # torch's zip writer turns the OSError into a RuntimeError on its way out
    with pytest.raises((OSError, RuntimeError)):
        train(compose(*run, "ckpt_path=last", "trainer.max_steps=4"))
    monkeypatch.undo()
    assert _sha(last) == before
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".")]


def test_last_checkpoint_is_written_at_every_validation_of_a_plateau(
        compose, fast_overrides, tmp_path, monkeypatch):
    """optimizer.lr=0: the weights never move, so the monitored accuracy never improves
    after the first validation. last.ckpt is rewritten at each validation all the same
    (steps 2, 4 and 6 with val_check_interval=2, max_steps=6), and at the end (step 6):
    a run killed at step 5 resumes from step 4, not 2."""
    from prefopt.training.train import train

    written = []
    save = pl.Trainer.save_checkpoint

    def recorded(trainer, filepath, *args, **kwargs):
        save(trainer, filepath, *args, **kwargs)
        if Path(filepath).name == "last.ckpt":
            written.append(torch.load(filepath, weights_only=False)["global_step"])

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", recorded)
    out = tmp_path / "run"
    result = train(compose(*fast_overrides, "trainer.max_steps=6", "optimizer.lr=0",
                           "export_policy=false", f"output_dir={out}"))
    assert result["end"]["val/rewards/accuracies"] == result["start"]["val/rewards/accuracies"]
    assert sorted(set(written)) == [2, 4, 6] and written[-1] == 6
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("best")] == [
        "best-step2.ckpt"]  # the plateau's best is its first validation
