"""Objective discovery through entry points, and how Hydra sees the objectives.

Built-in and third-party objectives are found the same way: an entry point
`name = "package.module:Class"` in the group `prefopt.objectives` of a distribution's
metadata. A distribution may also declare, in the group `prefopt.config_paths`, a package
of Hydra configs (YAML presets under `objective/`) that joins Hydra's search path.
prefopt's own presets (`conf/objective/*.yaml`, e.g. `rpo`) live in its primary config
package `prefopt.conf`, which Hydra searches first anyway; they obey the same name rules.

Lazy by design. The metadata of all distributions is read once (`_entry_points`, cached).
Hydra sees group `objective` through `ObjectiveSource`, a config source that lists the
names from that metadata and imports a plugin only when Hydra loads its config, that is
when `objective=<name>` selects it. A plugin that is not selected is never imported, so a
broken one costs nothing; what metadata alone reveals (a malformed entry point, a package
that is not installed) is a warning. The selected plugin's Config dataclass becomes a
structured config, so Hydra checks the types of its fields and refuses unknown keys.
"""

from __future__ import annotations

import abc
import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import re
import warnings
from dataclasses import dataclass, is_dataclass
from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from hydra.plugins.config_source import ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import OmegaConf

from prefopt.objective import API_VERSION, Objective, ObjectiveConfig

ENTRY_POINT_GROUP = "prefopt.objectives"
# Reward functions of online objectives (prefopt.online.rewards): the same rules as
# objectives, read from metadata here.
REWARD_GROUP = "prefopt.rewards"
CONFIG_PATH_GROUP = "prefopt.config_paths"
BUILTIN_CONFIG_MODULE = "prefopt.conf"  # prefopt's own configs, presets included
CONFIG_GROUP = "objective"
SOURCE_SCHEME = "prefopt-objectives"
REWARD_CONFIG_GROUP = "reward"
REWARD_SOURCE_SCHEME = "prefopt-rewards"

# A name must survive Hydra's override grammar (`objective=<name>`) and be a file stem.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\Z")
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_OBJECT_REF = re.compile(rf"{_DOTTED}:{_DOTTED}\Z")
_MODULE_REF = re.compile(rf"{_DOTTED}\Z")


class PluginError(RuntimeError):
    """A plugin is missing, duplicated, broken or does not follow the contract."""


class PluginLoadError(PluginError, ConfigCompositionException):
    """A PluginError raised while Hydra composes: Hydra prints its message, no traceback."""


class PluginWarning(UserWarning):
    """A plugin that is not selected cannot be used; everything else works."""


@dataclass(frozen=True)
class PluginInfo:
    name: str  # the entry-point name: what `objective=<name>` selects
    value: str  # "package.module:Class"
    distribution: str  # the distribution that declares it
    version: str
    problem: str | None = None  # why it cannot load, as far as metadata tells

    @property
    def origin(self) -> str:
        return f"{self.distribution}=={self.version} ({self.name} = {self.value})"


@dataclass(frozen=True)
class ConfigPath:
    """A package of Hydra configs declared in `prefopt.config_paths`."""

    label: str
    module: str
    distribution: str
    version: str
    directory: Path | None  # None when it cannot be found (see `problem`)
    problem: str | None = None

    @property
    def origin(self) -> str:
        return f"{self.distribution}=={self.version} ({self.label} = {self.module})"


@dataclass(frozen=True)
class Preset:
    """`objective/<name>.yaml` in a config path: a named set of values for an objective."""

    name: str
    file: Path
    source: ConfigPath


# -- metadata ---------------------------------------------------------------------------

@functools.cache
def _entry_points():
    """Every distribution's entry points, read once: one scan for both groups."""
    return importlib.metadata.entry_points()


def _distribution(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    return (dist.name, dist.version) if dist is not None else ("<unknown>", "?")


def _package_locations(module: str) -> list[str] | None:
    """Directories of the top-level package of `module`, found without importing it."""
    top = module.partition(".")[0].partition(":")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return list(spec.submodule_search_locations or [])  # empty for a single-file module


def _metadata_problem(name: str, value: str, selector: str = "objective=<name>",
                      target: str = "Class") -> str | None:
    if not _NAME.match(name):
        return (f"its name is not usable as `{selector}` (letters, digits, '_' and '-', "
                "starting with a letter or '_')")
    if not _OBJECT_REF.match(value):
        return f"its value {value!r} is not of the form 'package.module:{target}'"
    if _package_locations(value) is None:
        return f"its package '{value.partition('.')[0].partition(':')[0]}' is not installed"
    return None


@functools.cache
def discover() -> dict[str, PluginInfo]:
    """All declared objectives by name, from metadata only (nothing is imported).

    Two distributions declaring one name is an error naming both: which one trains would
    depend on sys.path order, and a third party must never silently replace a built-in.
    """
    return _discover(ENTRY_POINT_GROUP, "objective", "objective=<name>", "Class")


@functools.cache
def discover_rewards() -> dict[str, PluginInfo]:
    """All declared reward functions by name (`reward.function=<name>`), by the objectives'
    rules: metadata only, a name two distributions declare is an error naming both, and
    what metadata shows unusable is a warning (and `problem`)."""
    return _discover(REWARD_GROUP, "reward", "reward.function=<name>", "function")


def _discover(group: str, kind: str, selector: str, target: str) -> dict[str, PluginInfo]:
    found: dict[str, PluginInfo] = {}
    for ep in _entry_points().select(group=group):
        dist, version = _distribution(ep)
        info = PluginInfo(ep.name, ep.value, dist, version,
                          _metadata_problem(ep.name, ep.value, selector, target))
        if ep.name in found:
            raise PluginError(f"two distributions declare the {kind} '{ep.name}': "
                              f"{found[ep.name].origin} and {info.origin}. "
                              "Uninstall one of them or rename its entry point.")
        found[ep.name] = info
    for info in found.values():
        if info.problem:
            warnings.warn(f"{kind} '{info.name}' from {info.origin} cannot be loaded: "
                          f"{info.problem}. The other {kind}s are unaffected.",
                          PluginWarning, stacklevel=3)
    return found


def _config_directory(module: str) -> tuple[Path | None, str | None]:
    if not _MODULE_REF.match(module):
        return None, f"its value {module!r} is not a package name such as 'package.conf'"
    locations = _package_locations(module)
    if locations is None:
        return None, f"package '{module.partition('.')[0]}' is not installed"
    parts = module.split(".")[1:]
    for location in locations:
        candidate = Path(location, *parts)
        if candidate.is_dir():
            return candidate, None
    return None, f"no directory for '{module}' in {locations}"


@functools.cache
def config_paths() -> tuple[ConfigPath, ...]:
    """The config packages of `prefopt.config_paths`, located without importing them."""
    found = []
    for ep in _entry_points().select(group=CONFIG_PATH_GROUP):
        dist, version = _distribution(ep)
        directory, problem = _config_directory(ep.value)
        path = ConfigPath(ep.name, ep.value, dist, version, directory, problem)
        if problem:
            warnings.warn(f"config path {path.origin} is skipped: {problem}",
                          PluginWarning, stacklevel=2)
        found.append(path)
    return tuple(found)


@functools.cache
def builtin_config_path() -> ConfigPath:
    """prefopt's own config package, `prefopt-train`'s primary config (`pkg://prefopt.conf`,
    first on every search path): its `objective/` holds the built-in presets. Located like
    the plugins' config packages, without importing it; `prefopt.conf` may live outside
    `prefopt/` (setuptools' package-dir maps it to `conf/`), so its own spec is asked."""
    spec = importlib.util.find_spec(BUILTIN_CONFIG_MODULE)
    version = importlib.metadata.version("prefopt")
    return ConfigPath("prefopt", BUILTIN_CONFIG_MODULE, "prefopt", version,
                      Path(next(iter(spec.submodule_search_locations))))


@functools.cache
def presets() -> dict[str, Preset]:
    """Objective presets by name: prefopt's built-in ones, then the config paths'. A preset
    must not reuse a name: Hydra would pick one of two same-named configs by search-path
    order, silently (a built-in one, in the primary config, always)."""
    objectives = discover()
    found: dict[str, Preset] = {}
    for path in (builtin_config_path(), *config_paths()):
        if path.directory is None:
            continue
        for file in sorted((path.directory / CONFIG_GROUP).glob("*.yaml")):
            name = file.stem
            if name in objectives and path.module == BUILTIN_CONFIG_MODULE:
                raise PluginError(f"the objective {objectives[name].origin} has the name of "
                                  f"prefopt's built-in preset '{name}' ({file}), which "
                                  f"`objective={name}` selects. Rename the objective's "
                                  "entry point.")
            if name in objectives:
                raise PluginError(f"the preset '{name}' ({file}) from {path.origin} has the "
                                  f"name of the objective {objectives[name].origin}. "
                                  "Rename the preset.")
            if name in found:
                raise PluginError(f"two distributions ship the preset '{name}': "
                                  f"{found[name].source.origin} ({found[name].file}) and "
                                  f"{path.origin} ({file}). Uninstall or rename one.")
            found[name] = Preset(name, file, path)
    return found


def clear_caches() -> None:
    """Forget what was read and loaded (tests that add distributions to sys.path)."""
    for cached in (_entry_points, discover, discover_rewards, builtin_config_path, config_paths,
                   presets, load):
        cached.cache_clear()


# -- loading ----------------------------------------------------------------------------

def unknown_name_message(name: str) -> str:
    names = sorted(discover())
    preset_names = sorted(presets())
    close = difflib.get_close_matches(name, names + preset_names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    listed = f" (presets: {', '.join(preset_names)})" if preset_names else ""
    return (f"unknown objective '{name}'. Available objectives: {', '.join(names)}"
            f"{listed}.{hint}")


def unknown_objectives(overrides: list[str]) -> list[str]:
    """Objectives that `objective=...` overrides (sweeps too) name but nobody provides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    known = set(discover()) | set(presets())
    parser = OverridesParser.create()
    unknown = []
    for text in overrides:
        if not text.lstrip("+").startswith(f"{CONFIG_GROUP}="):
            continue
        try:
            (override,) = parser.parse_overrides([text])
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() \
                else [override.get_value_element_as_str()]
        except Exception:  # Hydra reports a malformed override itself
            continue
        unknown += [v for v in values if v not in known and v not in unknown]
    return unknown


@functools.cache
def load(name: str) -> type[Objective]:
    """Import the objective class registered under `name` and check its contract."""
    plugins = discover()
    if name not in plugins:
        raise PluginError(unknown_name_message(name))
    info = plugins[name]
    if info.problem:
        raise PluginError(f"objective '{name}' from {info.origin} cannot be loaded: "
                          f"{info.problem}")
    module_name, _, attr = info.value.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = functools.reduce(getattr, attr.split("."), module)
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
    try:
        config_node(cls, name)
    except Exception as exc:
        raise PluginError(f"objective '{name}' from {info.origin}: its Config is not a valid "
                          f"Hydra schema (every field needs a default and a type OmegaConf "
                          f"supports): {type(exc).__name__}: {exc}") from exc
    return cls


def config_node(cls: type[Objective], name: str):
    """The structured config Hydra composes for `objective=<name>`.

    A field typed as a dict (`Dict[str, Any]`, e.g. mix's per-part `settings`) is open:
    its keys are the user's, so `objective.settings.dpo.beta=0.2` adds one without a `+`;
    the objective checks what it holds. Every other node refuses unknown keys."""
    node = OmegaConf.structured(cls.Config(name=name))
    for key in node:
        if OmegaConf.get_type(node, key) is dict:
            OmegaConf.set_struct(node[key], False)
    return node


def build(config: ObjectiveConfig) -> Objective:
    """Instantiate the objective for a (composed, converted) config."""
    cls = load(config.name)
    return cls(config)


# -- Hydra ------------------------------------------------------------------------------

class _EntryPointSource(ConfigSource):
    """A Hydra config group served from entry-point metadata: `<GROUP>/<name>` for each
    declared name, listed without importing anything; subclasses load one config."""

    GROUP: str

    @abc.abstractmethod
    def _declared(self) -> dict[str, PluginInfo]:
        """The names this group declares, from entry-point metadata."""

    @classmethod
    def _name(cls, config_path: str) -> str | None:
        group, _, name = config_path.strip("/").partition("/")
        if group != cls.GROUP or not name or "/" in name:
            return None
        return name.removesuffix(".yaml")

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", self.GROUP)

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        path = config_path.strip("/")
        if path == "" and results_filter in (None, ObjectType.GROUP):
            return [self.GROUP]
        if path == self.GROUP and results_filter in (None, ObjectType.CONFIG):
            return sorted(self._declared())
        return []


class ObjectiveSource(_EntryPointSource):
    """Group `objective` for Hydra: lists names from metadata, imports on load only."""

    GROUP = CONFIG_GROUP

    def _declared(self) -> dict[str, PluginInfo]:
        return discover()

    @staticmethod
    def scheme() -> str:
        return SOURCE_SCHEME

    def is_config(self, config_path: str) -> bool:
        return self._name(config_path) in discover()

    def load_config(self, config_path: str) -> ConfigResult:
        name = self._name(config_path)
        try:
            node = config_node(load(name), name)
        except PluginError as exc:
            raise PluginLoadError(str(exc)) from exc
        return ConfigResult(provider=discover()[name].distribution, path=self.full_path(),
                            config=node, header={"package": None})


class RewardSource(_EntryPointSource):
    """Group `reward` for Hydra: `reward=<name>` of an installed reward function is
    `reward.function=<name>`. prefopt's own configs (synthetic, model) come first in the
    search path; any other name reaches this source, which refuses one that is not
    installed with a message pointing at `reward.function=`."""

    GROUP = REWARD_CONFIG_GROUP

    def _declared(self) -> dict[str, PluginInfo]:
        return discover_rewards()

    @staticmethod
    def scheme() -> str:
        return REWARD_SOURCE_SCHEME

    def is_config(self, config_path: str) -> bool:
        return self._name(config_path) is not None

    def load_config(self, config_path: str) -> ConfigResult:
        name = self._name(config_path)
        rewards = discover_rewards()
        if name not in rewards:
            raise PluginLoadError(
                f"reward={name}: no reward config or installed reward function '{name}' "
                f"(installed: {', '.join(sorted(rewards)) or 'none'}); a function is chosen "
                f"with reward.function={name} (an entry-point name or "
                "package.module:function), a reward model with reward=model "
                "reward.model=<dir>")
        node = OmegaConf.create({"function": name, "model": None})
        return ConfigResult(provider=rewards[name].distribution, path=self.full_path(),
                            config=node, header={"package": None})


class ObjectiveSearchPath(SearchPathPlugin):
    """Adds the objectives and the plugins' config packages to every Hydra search path."""

    def manipulate_search_path(self, search_path) -> None:
        # After the primary config, so a plugin's presets never replace prefopt's configs.
        search_path.append("prefopt-objectives", f"{SOURCE_SCHEME}://")
        search_path.append("prefopt-rewards", f"{REWARD_SOURCE_SCHEME}://")
        for path in config_paths():
            if path.directory is not None:
                search_path.append(path.distribution, f"file://{path.directory}")
        presets()  # refuses presets whose names collide


def register_configs() -> None:
    """Make every installed objective selectable as `objective=<name>`, and every installed
    reward function as `reward=<name>`, in Hydra apps started after this call
    (`prefopt-train`, the compose API). Imports no plugin."""
    plugins = Plugins.instance()
    plugins.register(ObjectiveSource)
    plugins.register(RewardSource)
    plugins.register(ObjectiveSearchPath)
