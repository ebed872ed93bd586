"""Console scripts: `prefopt-train` (Hydra app) and `prefopt-plugins`."""

from __future__ import annotations

import argparse
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from prefopt import registry
from prefopt.data.records import RecordError
from prefopt.models import ModelSourceError
from prefopt.objective import UnknownSettingError
from prefopt.online import rewards
from prefopt.online.rewards import RewardError
from prefopt.training.config import ConfigError, imply_groups, register_schema
from prefopt.training.metrics import NonFiniteError
from prefopt.training.rundir import RunDirError

log = logging.getLogger("prefopt")

# Errors that describe bad input or a bad setup: the message says it all, no traceback.
_USER_ERRORS = (RecordError, registry.PluginError, ConfigError, NonFiniteError,
                FileNotFoundError, RewardError, UnknownSettingError, RunDirError,
                ModelSourceError)


@hydra.main(version_base="1.3", config_path="pkg://prefopt.conf", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    # Heavy imports after Hydra has parsed the command line.
    from prefopt.training.train import train

    try:
        if cfg.ckpt_path is not None:
            # A resume runs the run's own config.yaml, the command line's overrides on top
            # (train() refuses those a resume may not change), not the defaults of conf/.
            from prefopt.training.rundir import resume_config

            cfg = resume_config(cfg, list(HydraConfig.get().overrides.task))
        train(cfg)
    except _USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(f"prefopt-train: error: {exc}")


def train_entry() -> None:
    """`prefopt-train [overrides]`: see `prefopt-train --help`."""
    try:
        # Read the plugin metadata before Hydra starts, so that two distributions claiming
        # one objective or preset name is a one-line error rather than a traceback.
        registry.discover()
        registry.presets()
    except registry.PluginError as exc:
        sys.exit(f"prefopt-train: error: {exc}")
    register_schema()
    registry.register_configs()
    # `data.path=x` alone means data=files, not the synthetic task's settings with a path.
    overrides, notes = imply_groups(sys.argv[1:])
    for note in notes:
        print(f"prefopt-train: {note}", file=sys.stderr)
    sys.argv[1:] = overrides
    # Hydra's own message lists the options of `objective`; add the closest match.
    unknown = registry.unknown_objectives(sys.argv[1:])
    try:
        _train_app()
    except SystemExit as exc:
        if exc.code == 1:  # how Hydra exits after printing a composition error
            for name in unknown:
                print(f"prefopt-train: {registry.unknown_name_message(name)}", file=sys.stderr)
        raise


def _describe(cls) -> str:
    doc = (cls.__doc__ or "").strip()
    return cls.description or (doc.splitlines()[0] if doc else "")


def plugins_entry(argv: list[str] | None = None) -> None:
    """`prefopt-plugins`: the objectives (and presets) this installation can train with."""
    parser = argparse.ArgumentParser(
        prog="prefopt-plugins",
        description="List the objectives found through the 'prefopt.objectives' entry points, "
                    "the presets of the 'prefopt.config_paths' ones and the reward "
                    "functions of 'prefopt.rewards' (reward.function=<name>), with the "
                    "distribution that provides each.")
    parser.parse_args(argv)
    try:
        plugins, presets = registry.discover(), registry.presets()
        reward_rows = rewards.listing()
    except registry.PluginError as exc:
        sys.exit(f"prefopt-plugins: error: {exc}")
    rows = [("name", "distribution", "batch format", "description")]
    for name, info in sorted(plugins.items()):
        try:
            cls = registry.load(name)  # a listing: importing every plugin is the point
            rows.append((name, f"{info.distribution} {info.version}", cls.batch_format.value,
                         _describe(cls)))
        except registry.PluginError as exc:
            rows.append((name, f"{info.distribution} {info.version}", "-", f"BROKEN: {exc}"))
    for name, preset in sorted(presets.items()):
        source = preset.source
        rows.append((name, f"{source.distribution} {source.version}", "preset",
                     f"values in {preset.file}"))
    for name, dist, what in reward_rows:  # reward.function=<name>
        rows.append((name, dist, "reward", what))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
