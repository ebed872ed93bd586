"""The rules of a run directory (`output_dir`): one process at a time, one run per
directory, a resume keeps the settings the run was started with, and a file is replaced
whole or not at all, its earlier version kept aside.

- `lock(out)`: an exclusive flock on the directory itself, held for the whole run; a
  second run is refused naming the holder's pid. Locking the directory, not a file in
  it, leaves no file behind: a refused or failed resume changes no byte of the run.
- `refuse_existing(out)`: a run without `ckpt_path` does not write into another run.
- `resume_config(composed, overrides)`: what `prefopt-train output_dir=<run>
  ckpt_path=last [overrides]` runs: the run's own config.yaml, the command line's
  overrides on top; `check_resume(cfg, out)` refuses any change but those in `RESUMABLE`.
- `write_keeping`, `set_aside`: files replaced through a temporary file in the same
  folder (`prefopt.data.output.write_atomically`); a changed file's earlier version is kept as
  `<name>.before-resume[-N]<suffix>`, never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from prefopt.data.output import write_atomically
from prefopt.training.config import ConfigError

# What makes a directory a run: a second run without ckpt_path is refused there.
RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints")

# The keys a resume may change (a key, or everything under it): how long and where the
# run goes on, what it shows and where it writes. Anything else (model, data, objective,
# seed, optimizer, scheduler, reference, precision, ...) would make the resumed run
# another run than the one its checkpoint and config.yaml describe, or would be recorded
# without taking effect (Lightning restores the optimizer's learning rate from the
# checkpoint), so it is refused.
RESUMABLE = (
    "ckpt_path", "output_dir", "logger", "progress_bar", "export_policy", "logprob_impl",
    "reference_cache_dir", "reference_reuse", "trainer.max_steps", "trainer.max_epochs",
    "trainer.val_check_interval", "trainer.check_val_every_n_epoch",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.num_sanity_val_steps", "trainer.accelerator",
    "samples",
)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (in use, or holding another run); the
    message names the directory and the fix."""


# -- one process at a time --------------------------------------------------------------

def _holder(out: Path) -> str:
    """'pid N' of the process holding the flock on `out`, from /proc/locks (Linux)."""
    inode = os.stat(out).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another process"
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 18072 fe:00:2149020 0 EOF" (blocked waiters: "->")
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].endswith(f":{inode}"):
            return f"pid {fields[4]}"
    return "another process"


@contextlib.contextmanager
def lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory `out` (created if needed) while the
    block runs; RunDirError at once if another process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"output_dir={out} is in use by another prefopt-train ({_holder(out)}); "
                "wait for it to end, or choose another output_dir") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_existing(out: Path) -> None:
    """A new run (no ckpt_path) never writes into a directory that holds a run."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (out / "checkpoints" / "last.ckpt").exists() and \
            not (out / "metrics.csv").exists():
        # A run that stopped before its first checkpoint (a bad setting, a crash in the
        # first validation): nothing to resume, and its files are kept, not overwritten.
        raise RunDirError(
            f"output_dir={out} holds a run that stopped before its first checkpoint "
            f"({', '.join(found)}; no checkpoints/last.ckpt): there is nothing to resume; "
            "choose another output_dir, or delete this one to start again there")
    if found:
        raise RunDirError(
            f"output_dir={out} already holds a run ({', '.join(found)}); resume it with "
            f"`prefopt-train output_dir={out} ckpt_path=last`, or choose another output_dir")


# -- resuming with the run's own settings ------------------------------------------------

def load_saved(out: Path) -> DictConfig:
    """The run's config.yaml, typed by the schema and its objective's Config."""
    from prefopt.evaluate import load_run_config

    path = out / "config.yaml"
    try:
        return load_run_config(out)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path} cannot be read as a prefopt-train config ({message}); "
                          "resume with the prefopt version that wrote it") from None


def resume_config(composed: DictConfig, overrides: list[str]) -> DictConfig:
    """The config that `prefopt-train output_dir=<run> ckpt_path=... <overrides>` runs:
    the run's config.yaml, with each command-line override's key set to its value in
    `composed` (the config Hydra composed from conf/ and the same overrides). Without a
    config.yaml in output_dir (a checkpoint used to start a new directory), `composed`.
    Whether the overrides are allowed is `check_resume`'s business."""
    out = Path(composed.output_dir)
    if not (out / "config.yaml").is_file():
        return composed
    cfg = load_saved(out)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group  # `model=hf` (a group choice) replaces all of `model`
        if key == "hydra" or key.startswith("hydra."):
            continue
        with open_dict(cfg):
            if override.is_delete():
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent) if parent else cfg
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
            else:
                OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False,
                                 force_add=True)
    return cfg


def _plain(cfg: DictConfig) -> dict:
    """Plain values, as config.yaml writes them (enums as their values)."""
    return yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True)) or {}


def _differences(a, b, prefix: str = "") -> Iterator[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf that differs; a node whose
    `name` differs (another objective) as a whole, by its name."""
    if isinstance(a, dict) and isinstance(b, dict):
        if prefix and "name" in a and "name" in b and a["name"] != b["name"]:
            yield prefix, a["name"], b["name"]
            return
        for key in sorted(set(a) | set(b), key=str):
            yield from _differences(a.get(key, _ABSENT), b.get(key, _ABSENT),
                                    f"{prefix}{key}" if not prefix else f"{prefix}.{key}")
    elif a != b:
        yield prefix, a, b


_ABSENT = "<absent>"


def resumable(key: str) -> bool:
    return any(key == name or key.startswith(name + ".") for name in RESUMABLE)


def check_resume(cfg: DictConfig, out: Path) -> None:
    """ConfigError naming every setting of `cfg` that differs from the run's config.yaml
    and may not change on a resume. Nothing to compare without a config.yaml."""
    if not (out / "config.yaml").is_file():
        return
    changed = [(key, old, new) for key, old, new in _differences(_plain(load_saved(out)),
                                                                _plain(cfg))
               if not resumable(key)]
    if not changed:
        return
    shown = ", ".join(f"{key} ({_short(old)} in the run, {_short(new)} now)"
                      for key, old, new in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise ConfigError(
        f"ckpt_path={cfg.ckpt_path}: a resume cannot change {shown}{more}; a resumed run "
        f"keeps the settings in {out / 'config.yaml'} (only trainer.max_steps, logging, "
        "the progress bar and export may change): drop these overrides, or start a new "
        "run in another output_dir")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- files replaced whole, earlier versions kept -----------------------------------------

def _aside(path: Path, label: str) -> Path:
    number, aside = 1, path.with_name(f"{path.stem}.{label}{path.suffix}")
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.stem}.{label}-{number}{path.suffix}")
    return aside


def set_aside(path: Path, label: str = "before-resume") -> Path:
    """Rename `path` to `<stem>.<label><suffix>`, or `<stem>.<label>-2<suffix>`, ... if
    that exists: an earlier version is never overwritten."""
    aside = _aside(path, label)
    os.replace(path, aside)
    return aside


def write_keeping(path: Path, text: str, label: str = "before-resume") -> Callable[[], None]:
    """Write `text` to `path`; a different earlier content is kept under `set_aside`'s
    name (linked there first, so that one of the two names holds it at every moment),
    the same one left untouched. Returns what undoes the write."""
    data = text.encode()
    if not path.is_file():
        write_atomically(path, lambda f: f.write(data))
        return lambda: path.unlink(missing_ok=True)
    if path.read_bytes() == data:
        return lambda: None
    aside = _aside(path, label)
    os.link(path, aside)
    write_atomically(path, lambda f: f.write(data))
    return lambda: os.replace(aside, path)
