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

`reward.model` names a reward model saved by prefopt-train (objective=reward_bt or
reward_pl, its `<run>/policy`) instead; it scores samples rendered as in its training.

A function that raises, or returns something that is not a finite number, stops the run
with a RewardError naming the function and the sample: training on a garbage reward
would only hide the bug.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from prefopt import registry
from prefopt.data.records import Text

REWARD_GROUP = registry.REWARD_GROUP


class RewardError(ValueError):
    """A reward source failed or returned a value that cannot be trained on."""


@dataclass
class RewardConfig:
    function: Optional[str] = "synthetic"
    """A `prefopt.rewards` entry-point name (built in: synthetic) or a dotted path
    `package.module:function`, called as fn(prompt, completion) -> float per sample."""
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


class FunctionReward:
    """A per-sample reward function, with every value checked."""

    def __init__(self, fn: Callable[[Text, str], float], name: str):
        self.fn, self.name = fn, name

    def __call__(self, prompts: list[Text], completions: list[str]) -> torch.Tensor:
        values = []
        for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            where = (f"sample {i} (prompt {_describe(prompt)}, completion "
                     f"{_describe(completion)})")
            try:
                value = self.fn(prompt, completion)
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
            resolve_function(name)
            what = f"reward function {info.value}"
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


def build_reward(cfg: RewardConfig):
    """The reward source a RewardConfig names: exactly one of `function` and `model`."""
    if (cfg.function is None) == (cfg.model is None):
        raise RewardError("the reward needs exactly one source: reward.function (a name or "
                          "a dotted path) or reward.model (a reward-model directory; "
                          f"with reward.function=null), got function={cfg.function!r}, "
                          f"model={cfg.model!r}")
    if cfg.model is not None:
        return ModelReward(cfg.model, cfg.batch_size)
    fn = resolve_function(cfg.function)
    qualified = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"
    name = cfg.function if qualified.endswith(cfg.function) else f"'{cfg.function}' ({qualified})"
    return FunctionReward(fn, name)


def apply_missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor,
                              penalty: float | None) -> torch.Tensor:
    """Scores with `penalty` subtracted where a sample did not end with EOS."""
    if not penalty:
        return scores
    return scores - penalty * (~ended).to(scores.dtype)
