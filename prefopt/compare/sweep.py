"""From `prefopt-compare` overrides to the training jobs of a comparison.

The overrides are `prefopt-train`'s, in Hydra's grammar, sweeps included
(`objective=dpo,ipo objective.beta=0.05,0.1 seed=0,1`); Hydra's own basic sweeper
(`BasicSweeper.split_arguments`, the one `prefopt-train -m` runs) expands them into the
cartesian product of jobs. Then the objectives' settings are matched to each objective:

- A setting `objective.<key>` is applied to the objectives that have `<key>` (their
  composed config, presets included). An objective without it is trained once per seed
  at its own settings, and its table row says so: `(no beta)`. Nothing is dropped
  silently.
- A `<key>` that no objective of the comparison has is an error naming it and the
  settings each objective has: a typo never turns into a comparison without the setting.
- Everything else (`optimizer.lr=...`, `trainer.max_steps=...`) applies to every job, and
  every job's config is composed (Hydra's type and key checks) before any training starts.

A job's `setting` label lists the swept values that apply to it, the keys whose values
differ between the jobs (but seed, which the table averages over) plus every objective
setting given on the command line, e.g. `beta=0.05` or `beta=0.1 optimizer.lr=0.001`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from prefopt.training.config import ConfigError

PREFIX = "objective."
_MISSING = object()


@dataclass
class Job:
    """One training run of a comparison."""

    objective: str
    seed: int
    overrides: list[str]
    """prefopt-train overrides of this run (no output_dir)."""
    setting: str = ""
    """What sets this run apart from the other runs of its objective, seeds aside."""
    not_applicable: list[str] = field(default_factory=list)
    """objective.<key> settings of the comparison this objective does not have."""


def parse(overrides: Sequence[str]):
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:  # Hydra's OverrideParseException: one line is enough
        raise ConfigError(f"cannot read the overrides: {str(exc).splitlines()[0]}") from None


def _key(override) -> str:
    return override.key_or_group


def _value(job: list[str], key: str) -> str | None:
    for override in parse(job):
        if _key(override) == key and not override.is_delete():
            return override.value()
    return None


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a Hydra sweep over `overrides`, each as its own override list."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(parse(overrides), None)
    return [job for batch in batches for job in batch]


def objective_settings(name: str, compose: Callable[[list[str]], DictConfig]) -> DictConfig:
    """The composed `objective` node of `objective=<name>` (its settings, a preset's
    values included)."""
    return compose([f"objective={name}"]).objective


def _has(node: DictConfig, key: str) -> bool:
    """Whether the objective's config has `key`, or takes it: a key under an open mapping
    (mix's per-part `settings`) is the objective's to check."""
    if OmegaConf.select(node, key, default=_MISSING) is not _MISSING:
        return True
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = OmegaConf.select(node, ".".join(parts[:end]), default=_MISSING)
        if isinstance(parent, DictConfig):
            return not OmegaConf.is_struct(parent)
    return False


def plan(overrides: Sequence[str], compose: Callable[[list[str]], DictConfig],
         lenient: Sequence[str] = ()) -> list[Job]:
    """The jobs of a comparison. `compose(overrides)` is the config prefopt-train would
    run (prefopt.api.compose). `lenient`: objective keys the comparison added by default
    (not typed by the user): applied where they fit, never an error."""
    jobs = expand(overrides)
    asked = {_key(o)[len(PREFIX):] for o in parse(overrides)
             if _key(o).startswith(PREFIX)}
    settings: dict[str, DictConfig] = {}
    planned: dict[tuple[str, ...], Job] = {}
    for job in jobs:
        name = _value(job, "objective") or "dpo"
        if name not in settings:
            settings[name] = objective_settings(name, compose)
        kept, missing = [], []
        for text, override in zip(job, parse(job)):
            key = _key(override)
            if key.startswith(PREFIX) and not _has(settings[name], key[len(PREFIX):]):
                missing.append(key[len(PREFIX):])
                continue
            kept.append(text)
        seed = _value(kept, "seed")
        planned.setdefault(tuple(kept), Job(name, int(seed) if seed is not None else 0,
                                            kept, not_applicable=missing))
    _refuse_unknown_keys(asked - set(lenient), settings)
    # Grouped by objective, in the order the sweep names them (then settings, then seeds).
    order = list(settings)
    result = sorted(planned.values(), key=lambda j: order.index(j.objective))
    _label(result, asked)
    return result


def _refuse_unknown_keys(asked: set[str], settings: dict[str, DictConfig]) -> None:
    for key in sorted(asked):
        if any(_has(node, key) for node in settings.values()):
            continue
        known = sorted({str(k) for node in settings.values() for k in node if k != "name"})
        close = difflib.get_close_matches(key.split(".")[0], known, n=1)
        hint = f" Did you mean {PREFIX}{close[0]}?" if close else ""
        each = "; ".join(f"{name}: {', '.join(str(k) for k in node if k != 'name') or 'none'}"
                         for name, node in sorted(settings.items()))
        raise ConfigError(f"{PREFIX}{key}: none of the objectives compared has a setting "
                          f"'{key}' (their settings: {each}).{hint}")


def _label(jobs: list[Job], asked: set[str]) -> None:
    """Fill each job's `setting`: its values of the keys that vary between jobs (seed and
    objective aside) and of the objective settings asked for; `(no <key>)` for an asked
    setting the objective lacks."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in parse(job.overrides):
            values.setdefault(_key(override), set()).add(str(override.value()))
    varying = {k for k, seen in values.items() if len(seen) > 1 or
               any(k not in {_key(o) for o in parse(j.overrides)} for j in jobs)}
    shown = (varying | {PREFIX + k for k in asked}) - {"seed", "objective"}
    for job in jobs:
        parts = []
        for override in parse(job.overrides):
            key = _key(override)
            if key in shown:
                name = key[len(PREFIX):] if key.startswith(PREFIX) else key
                parts.append(f"{name}={override.value()}")
        parts += [f"(no {key})" for key in job.not_applicable]
        job.setting = " ".join(parts)
