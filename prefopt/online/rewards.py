"""Reward sources for online objectives: a Python function or a trained reward model.

A reward function scores one sample, `fn(prompt, completion) -> float`, where `prompt` is
the record's prompt (a string or chat messages) and `completion` the decoded sample
(special tokens removed). It is named in `reward.function` by

- the name of an entry point in the group `prefopt.rewards`, so that a package publishes
  rewards exactly as it publishes objectives, under the same rules (prefopt.registry:
  a name two distributions declare is an error naming both, a broken entry point is
  reported with its distribution and error; `reward=<name>` selects one too); prefopt's
  own `synthetic` (the built-in task's graded score, `prefopt.data.synthetic.score`, in
  [0, 1]) is registered there;
- or a dotted path, `package.module:function` (or `package.module.function`).

Either may name a *factory* instead: a callable whose parameters are all keyword-only
(`def length(*, target: int = 8)`, or a class whose `__init__` is), called once with
`reward.kwargs` (`reward.kwargs.target=8` on the command line) and returning the reward
function. The signature decides, not the kwargs: a factory with no kwargs given is called
with its defaults, and kwargs given to a plain function are refused. Every kwarg is checked
against the factory's signature first, each mistake one line naming the key: a key it does
not take (with the ones it does), a value of the wrong type for the annotation (int, float,
str, bool, Optional, Literal, list[...], dict[str, ...]; an int does for a float and is
passed as one), a required one missing. A factory that raises, or returns something that is
not callable, is a RewardError too.

`reward.model` names a reward model saved by prefopt-train (objective=reward_bt or
reward_pl, its `<run>/policy`) instead; it scores samples rendered as in its training.

A function that raises, or returns something that is not a finite number, stops the run
with a RewardError naming the function and the sample: training on a garbage reward
would only hide the bug.

Record fields as keyword arguments. A prompt record's fields other than `prompt` (a gold
`answer`, say: `{"prompt": "12+7=", "answer": "19"}`) reach the reward function as
keyword arguments, as TRL passes dataset columns to its reward functions; which ones is
read off the function's signature once:

- `fn(prompt, completion)`: none, as before;
- `fn(prompt, completion, answer)` or `fn(prompt, completion, *, answer, tol=0.0)`: the
  fields its further parameters name; a field of a parameter without a default that a
  record lacks is a RewardError naming the field, the record and the fields it has (one
  with a default keeps it);
- `fn(prompt, completion, **fields)`: every field of the record.

The built-in `exact_match` (prefopt.online.verifiable) takes `answer` so.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from prefopt import registry
from prefopt.data.prompts import prompt_fields
from prefopt.data.records import Text

REWARD_GROUP = registry.REWARD_GROUP


class RewardError(ValueError):
    """A reward source failed or returned a value that cannot be trained on."""


def _open_dict():
    """An empty dict that Hydra's struct mode leaves open to new keys: the default of
    `kwargs`, so that `reward.kwargs.<key>=<value>` needs no `+` (an OmegaConf DictConfig
    flagged struct=False; `OmegaConf.to_object` and `dict()` turn it into a plain dict)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({}, flags={"struct": False})


@dataclass
class RewardConfig:
    function: Optional[str] = "synthetic"
    """A `prefopt.rewards` entry-point name (built in: synthetic, exact_match) or a dotted
    path `package.module:function`, called as fn(prompt, completion) -> float per sample
    (the record's other fields as keyword arguments where its signature names them), or
    a factory of one (all parameters keyword-only), called once with `kwargs`."""
    kwargs: dict[str, Any] = field(default_factory=_open_dict)
    """Keyword arguments of a reward factory (reward.kwargs.target=8, no `+`: the factory's
    signature, not the schema, says which keys exist); checked against its signature. A
    plain reward function takes none."""
    model: Optional[str] = None
    """A reward model directory saved by prefopt-train (<run>/policy of reward_bt or
    reward_pl); set `function` to null with it (reward=model does)."""
    missing_eos_penalty: Optional[float] = None
    """Subtracted from the reward of a sample that did not end (no EOS) within
    rollout.max_new_tokens; empty: none."""
    batch_size: int = 64
    """Samples per forward of a reward model."""


def _describe(text, limit: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class FieldParameters:
    """Which record fields a reward function takes as keyword arguments (its parameters
    after prompt and completion): `names` those it names, `required` those without a
    default, `every` whether it takes **kwargs (then all fields)."""

    names: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    every: bool = False

    @classmethod
    def of(cls, fn: Callable) -> "FieldParameters":
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # no signature to read: called with two arguments
            return cls()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
        # The first two positional parameters are (prompt, completion); the rest, and the
        # keyword-only ones, name fields.
        named = [p for p in params if p.kind == p.KEYWORD_ONLY or
                 (p.kind == p.POSITIONAL_OR_KEYWORD and p in positional[2:])]
        return cls(names=tuple(p.name for p in named),
                   required=tuple(p.name for p in named if p.default is p.empty),
                   every=any(p.kind == p.VAR_KEYWORD for p in params))

    def kwargs(self, fields: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
        if self.every:
            return {k: v for k, v in fields.items() if k not in skip}
        return {k: fields[k] for k in self.names if k in fields}


class FunctionReward:
    """A per-sample reward function, with every value checked; record fields reach it as
    keyword arguments (see the module docstring)."""

    def __init__(self, fn: Callable[..., float], name: str):
        self.fn, self.name = fn, name
        self.parameters = FieldParameters.of(fn)
        try:
            positional = [p.name for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            positional = []
        self._positional = tuple(positional[:2])  # never passed again as fields

    def _fields(self, prompt: Text, where: str) -> dict[str, Any]:
        fields = prompt_fields(prompt)
        missing = [name for name in self.parameters.required if name not in fields]
        if missing:
            record = getattr(prompt, "where", "the record")
            raise RewardError(f"reward function {self.name} needs the record field "
                              f"'{missing[0]}' (its parameter {missing[0]}), which "
                              f"{record} lacks (its fields: "
                              f"{', '.join(['prompt', *fields])}), on {where}")
        return self.parameters.kwargs(fields, self._positional)

    def __call__(self, prompts: list[Text], completions: list[str]) -> torch.Tensor:
        values = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            where = (f"sample {i} (prompt {_describe(prompt)}, completion "
                     f"{_describe(completion)})")
            kwargs = self._fields(prompt, where)
            try:
                value = self.fn(prompt, completion, **kwargs)
            except Exception as exc:
                raise RewardError(f"reward function {self.name} raised "
                                  f"{type(exc).__name__}: {exc} on {where}") from exc
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise RewardError(f"reward function {self.name} returned {_describe(value)} "
                                  f"({type(value).__name__}), not a number, on {where}")
            if not math.isfinite(value):
                raise RewardError(f"reward function {self.name} returned {value} on {where}")
            values.append(float(value))
        return torch.tensor(values, dtype=torch.float32)


class ModelReward:
    """A trained scalar reward model (prefopt.steer.scorer.RewardScorer)."""

    def __init__(self, path: str, batch_size: int):
        from prefopt.steer.scorer import RewardScorer

        self.scorer, self.name, self.batch_size = RewardScorer.load(path), path, batch_size

    def __call__(self, prompts: list[Text], completions: list[str]) -> torch.Tensor:
        scores = self.scorer.score(prompts, completions, batch_size=self.batch_size)
        bad = (~torch.isfinite(scores)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise RewardError(f"reward model {self.name} gave {scores[i].item()} on sample "
                              f"{i} (prompt {_describe(prompts[i])}, completion "
                              f"{_describe(completions[i])})")
        return scores

    def to(self, device) -> "ModelReward":
        self.scorer.model.to(device)
        return self


def entry_points() -> dict[str, registry.PluginInfo]:
    """The reward functions declared here, by entry-point name, from metadata (the
    objectives' rules: prefopt.registry.discover_rewards; two distributions declaring one
    name is a PluginError naming both)."""
    return registry.discover_rewards()


def available() -> list[str]:
    """The reward functions installed here, by entry-point name."""
    return sorted(entry_points())


def _load_entry(spec: str, info: registry.PluginInfo) -> Callable:
    if info.problem:
        raise RewardError(f"reward.function={spec}: the reward '{spec}' from {info.origin} "
                          f"cannot be loaded: {info.problem}")
    module, _, attr = info.value.partition(":")
    try:
        return functools.reduce(getattr, attr.split("."), importlib.import_module(module))
    except Exception as exc:
        raise RewardError(f"reward.function={spec}: the reward '{spec}' from {info.origin} "
                          f"failed to load: {type(exc).__name__}: {exc}") from exc


def listing() -> list[tuple[str, str, str]]:
    """(name, "distribution version", what it is) of every declared reward function, each
    loaded (a listing: importing them is the point); one that fails says `BROKEN: why`."""
    rows = []
    for name, info in sorted(entry_points().items()):
        try:
            kind = "reward factory" if is_factory(resolve_function(name)) else \
                "reward function"
            what = f"{kind} {info.value}"
        except RewardError as exc:
            what = f"BROKEN: {exc}"
        rows.append((name, f"{info.distribution} {info.version}", what))
    return rows


def resolve_function(spec: str) -> Callable:
    """The function an entry-point name or a dotted path names."""
    info = entry_points().get(spec)
    if info is not None:
        fn = _load_entry(spec, info)
    else:
        module, sep, attr = spec.partition(":")
        if not sep:
            module, _, attr = spec.rpartition(".")
        if not module or not attr:
            raise RewardError(f"reward.function={spec}: neither an installed reward "
                              f"({', '.join(available()) or 'none'}) nor a dotted path "
                              "package.module:function")
        try:
            fn = importlib.import_module(module)
            for part in attr.split("."):
                fn = getattr(fn, part)
        except (ImportError, AttributeError) as exc:
            raise RewardError(f"reward.function={spec}: cannot import it ({exc}); installed "
                              f"rewards: {', '.join(available()) or 'none'}") from exc
    if not callable(fn):
        raise RewardError(f"reward.function={spec} is a {type(fn).__name__}, not a function")
    return fn


def is_factory(obj: Callable) -> bool:
    """Whether `obj` is a reward factory: every parameter of its signature keyword-only (no
    parameter at all counts too; a reward function takes (prompt, completion))."""
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # no signature to read: a plain function
        return False
    return all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) if isinstance(hint, type) else \
        str(hint).replace("typing.", "")


def _conforms(value, hint) -> tuple[bool, Any]:
    """(whether `value` fits the annotation `hint`, the value to pass: an int as a float
    where a float is wanted). Annotations it does not know accept anything."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True, value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            ok, converted = _conforms(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args), value
    if hint is type(None):
        return value is None, value
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        if not args:
            return True, value
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return False, value
            items = [_conforms(v, a) for v, a in zip(value, args)]
            return all(ok for ok, _ in items), tuple(c for _, c in items)
        items = [_conforms(v, args[0]) for v in value]
        converted = [c for _, c in items]
        return all(ok for ok, _ in items), tuple(converted) if origin is tuple else converted
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False, value
        if len(args) != 2:
            return True, value
        items = {k: _conforms(v, args[1]) for k, v in value.items()}
        return (all(_conforms(k, args[0])[0] for k in value)
                and all(ok for ok, _ in items.values())), {k: c for k, (_, c) in items.items()}
    if isinstance(hint, type):
        return isinstance(value, hint), value
    return True, value


def make_function(obj: Callable, kwargs: dict[str, Any] | None, spec: str) -> Callable:
    """The reward function `obj` is: itself, or for a factory (is_factory) what it returns
    when called with `kwargs`, each checked against its signature first (RewardError, one
    line naming the key, on a mistake). An OmegaConf node is made plain first."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(kwargs, DictConfig):
        kwargs = OmegaConf.to_container(kwargs, resolve=True)
    kwargs = dict(kwargs or {})
    if not is_factory(obj):
        if kwargs:
            raise RewardError(f"reward.kwargs.{next(iter(kwargs))}: reward.function={spec} is "
                              "a reward function fn(prompt, completion), not a factory (a "
                              "callable taking keyword-only arguments), so it takes no "
                              f"reward.kwargs (got {', '.join(kwargs)})")
        return obj
    signature = inspect.signature(obj)
    try:
        hints = typing.get_type_hints(obj if not isinstance(obj, type) else obj.__init__)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    params = {n: p for n, p in signature.parameters.items() if p.kind == p.KEYWORD_ONLY}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    accepted = ", ".join(f"{n}: {_type_name(hints[n])}" if n in hints else n for n in params)
    for key, value in list(kwargs.items()):
        if key not in params:
            if open_ended:
                continue
            raise RewardError(f"reward.kwargs.{key}: the reward factory {spec} takes no "
                              f"argument '{key}'; it accepts: {accepted or 'none'}")
        if key in hints:
            ok, kwargs[key] = _conforms(value, hints[key])
            if not ok:
                raise RewardError(f"reward.kwargs.{key}={value!r}: the reward factory {spec} "
                                  f"wants {key}: {_type_name(hints[key])}, got "
                                  f"{type(value).__name__}")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise RewardError(f"reward.kwargs.{missing[0]}: the reward factory {spec} needs it "
                          f"(reward.kwargs.{missing[0]}=<value>); it accepts: {accepted}")
    try:
        fn = obj(**kwargs)
    except Exception as exc:
        raise RewardError(f"reward.function={spec}: the reward factory raised "
                          f"{type(exc).__name__}: {exc} with kwargs {kwargs}") from exc
    if not callable(fn):
        raise RewardError(f"reward.function={spec}: the reward factory returned "
                          f"{_describe(fn)} ({type(fn).__name__}), not a function "
                          "fn(prompt, completion) -> float")
    return fn


def build_reward(cfg: RewardConfig):
    """The reward source a RewardConfig names: exactly one of `function` and `model`."""
    if (cfg.function is None) == (cfg.model is None):
        raise RewardError("the reward needs exactly one source: reward.function (a name or "
                          "a dotted path) or reward.model (a reward-model directory; "
                          f"with reward.function=null), got function={cfg.function!r}, "
                          f"model={cfg.model!r}")
    kwargs = dict(cfg.kwargs or {})
    if cfg.model is not None:
        if kwargs:
            raise RewardError(f"reward.kwargs.{next(iter(kwargs))}: reward.kwargs are for a "
                              "reward factory named in reward.function; a reward model "
                              f"(reward.model={cfg.model}) takes none")
        return ModelReward(cfg.model, cfg.batch_size)
    obj = resolve_function(cfg.function)
    qualified = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', obj)}"
    name = cfg.function if qualified.endswith(cfg.function) else f"'{cfg.function}' ({qualified})"
    fn = make_function(obj, kwargs, cfg.function)
    if is_factory(obj):
        name += "(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    return FunctionReward(fn, name)


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor,
                              penalty: float | None) -> torch.Tensor:
    """Scores with `penalty` subtracted where a sample did not end with EOS."""
    if not penalty:
        return scores
    return scores - penalty * (~ended).to(scores.dtype)
