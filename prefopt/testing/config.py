"""The config checks: an objective's Config composes through `prefopt-train`'s real
Hydra config with `objective=<name>`, every field overridden on the command line, and
converts back to the Config dataclass; an unknown key (also one forced in with a `+`) and
a value of the wrong type are refused. `compose_objective` gives plugin authors the same
composition, to test a preset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing

from prefopt import registry
from prefopt.objective import Objective, ObjectiveConfig, UnknownSettingError
from prefopt.testing.errors import ConformanceError


def _render(value) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a Hydra override")


def _optional_inner(tp):
    """T for Optional[T] / T | None, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _another_value(tp, default):
    """A valid value of type `tp` different from `default`, or raise LookupError."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _another_value(inner, None if default is None else default)
    if tp is bool:
        return not default if default is not None else True
    if tp is int:
        return (default or 0) + 1
    if tp is float:
        return (default or 0.0) + 0.25
    if tp is str:
        return (default or "") + "_changed"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = [m for m in tp if m != default]
        if members:
            return members[0]
    raise LookupError


def _scalar_kind(tp):
    inner = _optional_inner(tp)
    return _scalar_kind(inner) if inner is not None else tp


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@contextlib.contextmanager
def _prefopt_train_config():
    """Hydra initialised on `prefopt-train`'s own config, with every installed objective."""
    from hydra import initialize_config_module

    from prefopt.training.config import register_schema

    register_schema()
    registry.register_configs()
    with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
        yield


def _objective_config(overrides) -> ObjectiveConfig:
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_object(cfg.objective)


def compose_objective(*overrides: str) -> ObjectiveConfig:
    """The objective config `prefopt-train <overrides>` runs with, e.g.
    `compose_objective("objective=my_preset")` to test a YAML preset."""
    with _prefopt_train_config():
        return _objective_config(overrides)


def check_config(cls: type[Objective], name: str,
                 values: dict[str, typing.Any] | None = None) -> list[str]:
    """The Config composes through `prefopt-train`'s real config and back."""
    from hydra.errors import HydraException

    values = dict(values or {})
    hints = typing.get_type_hints(cls.Config)
    fields = [f for f in dataclasses.fields(cls.Config) if f.init and f.name != "name"]
    expected = {}
    for field in fields:
        if field.name in values:
            expected[field.name] = values.pop(field.name)
            continue
        try:
            expected[field.name] = _another_value(hints[field.name], _default(field))
        except LookupError:
            raise ConformanceError(
                f"cannot derive an override for {cls.Config.__qualname__}.{field.name} "
                f"(type {hints[field.name]}): pass values={{'{field.name}': <a value>}}"
                ) from None
    if values:
        raise ConformanceError(f"values= names fields that {cls.Config.__qualname__} does "
                               f"not have: {sorted(values)}")
    selected = f"{registry.CONFIG_GROUP}={name}"
    ran = []
    with _prefopt_train_config():
        def objective_config(*overrides, expect_failure=False):
            try:
                return _objective_config([selected, *overrides])
            except HydraException as exc:
                if expect_failure:
                    raise
                raise ConformanceError(f"`prefopt-train {selected} {' '.join(overrides)}` "
                                       f"does not compose: {exc} {exc.__cause__ or ''}"
                                       ) from exc

        got = objective_config()
        if got != cls.Config(name=name):
            raise ConformanceError(f"`{selected}` composes to {got!r}, not the defaults "
                                   f"{cls.Config(name=name)!r}")
        overrides = [f"objective.{k}={_render(v)}" for k, v in expected.items()]
        got = objective_config(*overrides)
        if not isinstance(got, cls.Config):
            raise ConformanceError(f"the composed objective config converts to "
                                   f"{type(got).__qualname__}, not {cls.Config.__qualname__}")
        wrong = {k: (getattr(got, k), v) for k, v in expected.items()
                 if _plain(getattr(got, k)) != _plain(v)}
        if wrong:
            raise ConformanceError("overrides did not survive the round trip through Hydra "
                                   "(field: got, expected): " + str(wrong))
        ran.append("config round trip")

        key = "not_a_field_of_this_config"
        try:
            objective_config(f"objective.{key}=1", expect_failure=True)
        except HydraException as exc:
            if key not in f"{exc} {exc.__cause__}":
                raise ConformanceError(f"an unknown key was refused, but the message does "
                                       f"not name it: {exc}") from exc
        else:
            raise ConformanceError(f"`objective.{key}=1` was accepted: the Config must be "
                                   "a structured schema that refuses unknown keys")
        # A `+` forces a key past the schema: converting back to the Config refuses it
        # (ObjectiveConfig.__setattr__), or the objective would silently ignore it.
        try:
            objective_config(f"+objective.{key}=1", expect_failure=True)
        except (HydraException, UnknownSettingError) as exc:
            if key not in f"{exc} {exc.__cause__}":
                raise ConformanceError(f"`+objective.{key}=1` was refused, but the message "
                                       f"does not name the key: {exc}") from exc
        else:
            raise ConformanceError(f"`+objective.{key}=1` was accepted: the Config keeps "
                                   "an undeclared setting the objective never reads (derive "
                                   "it from ObjectiveConfig, whose __setattr__ refuses them, "
                                   "and do not override __setattr__)")
        ran.append("config unknown key")

        typed = [f.name for f in fields if _scalar_kind(hints[f.name]) in (int, float, bool)]
        if typed:
            try:
                objective_config(f"objective.{typed[0]}='not a number'", expect_failure=True)
            except HydraException:
                ran.append("config types")
            else:
                raise ConformanceError(f"`objective.{typed[0]}='not a number'` was accepted: "
                                       f"the field's type ({hints[typed[0]]}) is not checked")
    return ran
