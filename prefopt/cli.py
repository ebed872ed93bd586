"""Console scripts: `prefopt-train` (Hydra app) and `prefopt-plugins`."""

from __future__ import annotations

import argparse
import logging
import sys

import hydra
from omegaconf import DictConfig

from prefopt import registry
from prefopt.config import register_schema
from prefopt.data.records import RecordError
from prefopt.module import NonFiniteError

log = logging.getLogger("prefopt")

# Errors that describe bad input or a bad setup: the message says it all, no traceback.
_USER_ERRORS = (RecordError, registry.PluginError, NonFiniteError)


@hydra.main(version_base="1.3", config_path="pkg://prefopt.conf", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from prefopt.train import train  # heavy imports after Hydra has parsed the command line

    try:
        train(cfg)
    except _USER_ERRORS as exc:
        log.error("%s", exc)
        sys.exit(f"prefopt-train: error: {exc}")


def train_entry() -> None:
    """`prefopt-train [overrides]`: see `prefopt-train --help`."""
    register_schema()
    registry.register_configs()
    _train_app()


def plugins_entry(argv: list[str] | None = None) -> None:
    """`prefopt-plugins`: the objectives this installation can train with."""
    parser = argparse.ArgumentParser(
        prog="prefopt-plugins",
        description="List the objectives found through the 'prefopt.objectives' entry points.")
    parser.parse_args(argv)
    rows = [("name", "distribution", "batch format", "description")]
    for name, info in sorted(registry.discover().items()):
        try:
            cls = registry.load(name)
            rows.append((name, f"{info.distribution} {info.version}", cls.batch_format.value,
                         cls.description or (cls.__doc__ or "").strip().splitlines()[0]))
        except registry.PluginError as exc:
            rows.append((name, f"{info.distribution} {info.version}", "-", f"BROKEN: {exc}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
