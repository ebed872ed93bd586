"""Objective discovery through the entry-point group `prefopt.objectives`.

Built-in and third-party objectives are found the same way: an entry point
`name = "package.module:Class"` in a distribution's metadata. The metadata is read once;
`register_configs()` stores each objective's Config in Hydra's ConfigStore under group
`objective`, so `objective=<name>` selects it and its fields are type-checked by Hydra.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import warnings
from dataclasses import dataclass, is_dataclass

from hydra.core.config_store import ConfigStore

from prefopt.objective import API_VERSION, Objective, ObjectiveConfig

ENTRY_POINT_GROUP = "prefopt.objectives"
CONFIG_GROUP = "objective"


class PluginError(RuntimeError):
    """A plugin is missing, duplicated, broken or does not follow the contract."""


@dataclass(frozen=True)
class PluginInfo:
    name: str  # the entry-point name: what `objective=<name>` selects
    value: str  # "package.module:Class"
    distribution: str  # the distribution that declares it
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution}=={self.version} ({self.name} = {self.value})"


@functools.cache
def discover() -> dict[str, PluginInfo]:
    """All declared objectives by name, from metadata only (nothing is imported)."""
    found: dict[str, PluginInfo] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "<unknown>",
                          dist.version if dist else "?")
        if ep.name in found and found[ep.name].value != info.value:
            raise PluginError(f"two distributions declare the objective '{ep.name}': "
                              f"{found[ep.name].origin} and {info.origin}. "
                              "Uninstall one of them or rename its entry point.")
        found[ep.name] = info
    return found


def unknown_name_message(name: str) -> str:
    names = sorted(discover())
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"unknown objective '{name}'. Available objectives: {', '.join(names)}.{hint}"


@functools.cache
def load(name: str) -> type[Objective]:
    """Import the objective class registered under `name` and check its contract."""
    plugins = discover()
    if name not in plugins:
        raise PluginError(unknown_name_message(name))
    info = plugins[name]
    module_name, _, attr = info.value.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = functools.reduce(getattr, attr.split("."), module) if attr else module
    except Exception as exc:
        raise PluginError(f"objective '{name}' from {info.origin} failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise PluginError(f"objective '{name}' from {info.origin} is not a subclass of "
                          f"prefopt.objective.Objective (got {cls!r})")
    if getattr(cls, "api_version", None) != API_VERSION:
        raise PluginError(f"objective '{name}' from {info.origin} targets plugin API version "
                          f"{getattr(cls, 'api_version', None)}, this prefopt speaks "
                          f"version {API_VERSION}")
    config_cls = getattr(cls, "Config", None)
    if not (is_dataclass(config_cls) and issubclass(config_cls, ObjectiveConfig)):
        raise PluginError(f"objective '{name}' from {info.origin}: its Config must be a "
                          "dataclass deriving from prefopt.objective.ObjectiveConfig")
    return cls


def register_configs() -> None:
    """Store every loadable objective's Config in Hydra's ConfigStore (group `objective`).

    A plugin that fails to load is skipped with a warning, so one broken third-party
    package does not take the others down; selecting it later raises its load error.
    """
    store = ConfigStore.instance()
    for name in discover():
        try:
            cls = load(name)
        except PluginError as exc:
            warnings.warn(str(exc), stacklevel=2)
            continue
        store.store(group=CONFIG_GROUP, name=name, node=cls.Config(name=name),
                    provider=discover()[name].distribution)


def build(config: ObjectiveConfig) -> Objective:
    """Instantiate the objective for a (composed, converted) config."""
    cls = load(config.name)
    return cls(config)
