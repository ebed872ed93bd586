"""The conformance check of reward functions (group `prefopt.rewards`), for a reward
package's own pytest suite:

    from prefopt.testing import check_reward
    from my_package.rewards import length_ok, length

    def test_conformance():
        check_reward(length_ok, name="length_ok")               # a reward function
        check_reward(length, name="length", kwargs={"target": 8})  # a factory, configured

What is checked, each failure a `ConformanceError` naming the reward and the property:

- entry point: `name` is installed in `prefopt.rewards` and loads this very object;
- build: the object becomes a reward function as prefopt-train makes one
  (prefopt.online.rewards.make_function): a plain function is used as it is and takes no
  kwargs; a factory (every parameter keyword-only) is called with `kwargs`, checked
  against its signature, and must return a callable;
- values: on each sample of `SAMPLES` (prompts of the built-in task as text, then as chat
  messages, lists of {role, content}; completions right, wrong, empty and unrelated) it
  returns what training accepts: a real number (a float, an int or a one-element tensor;
  not a bool), finite, without raising. `chat=False` leaves out the chat prompts, for a
  reward that only serves text prompts (the built-in `synthetic`, which parses its task's
  prompt strings);
- determinism: scoring the same samples again (fresh copies) gives the same values,
  exactly: an online objective compares the scores of a prompt's samples, and a reward
  that changes its mind turns the comparison into noise.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from prefopt import registry
from prefopt.online import rewards
from prefopt.testing.errors import ConformanceError

_TEXT_PROMPTS = ["sort 321", "reverse 12", "sort 9075", "reverse 840"]
_CHAT_PROMPTS = [
    [{"role": "user", "content": "sort 321"}],
    [{"role": "system", "content": "Answer with digits only."},
     {"role": "user", "content": "reverse 12"}],
    [{"role": "user", "content": "sort 9075"}],
    [{"role": "system", "content": "Answer with digits only."},
     {"role": "user", "content": "reverse 840"}],
]
_COMPLETIONS = ["123", "12", "", "hello world"]  # right, wrong, empty, unrelated

# (prompt, completion) pairs the values and determinism checks score: text prompts first.
TEXT_SAMPLES = list(zip(_TEXT_PROMPTS, _COMPLETIONS))
CHAT_SAMPLES = list(zip(_CHAT_PROMPTS, _COMPLETIONS))
SAMPLES = TEXT_SAMPLES + CHAT_SAMPLES

REWARD_CHECKS = ("entry point", "build", "values", "determinism")


def check_reward(fn_or_factory: Callable, name: str, kwargs: dict[str, Any] | None = None,
                 *, chat: bool = True) -> list[str]:
    """Every check of a reward function or factory installed as `name` (see the module
    docstring); returns the checks that ran. `kwargs`: a factory's keyword arguments, as
    `reward.kwargs` would give them. `chat=False`: score text prompts only."""
    _check_reward_entry_point(fn_or_factory, name)
    try:
        fn = rewards.make_function(fn_or_factory, kwargs, name)
    except rewards.RewardError as exc:
        raise ConformanceError(f"reward '{name}': {exc}") from exc
    samples = SAMPLES if chat else TEXT_SAMPLES
    first = _score(fn, name, samples)
    again = _score(fn, name, copy.deepcopy(samples))
    for i, (a, b) in enumerate(zip(first.tolist(), again.tolist())):
        if a != b:
            prompt, completion = samples[i]
            raise ConformanceError(f"reward '{name}' is not deterministic: sample {i} (prompt "
                                   f"{prompt!r}, completion {completion!r}) scored {a} and "
                                   f"then {b}")
    return list(REWARD_CHECKS)


def _check_reward_entry_point(obj: Callable, name: str) -> None:
    declared = registry.discover_rewards()
    if name not in declared:
        raise ConformanceError(
            f"no reward '{name}' is installed: declare `{name} = \"<module>:"
            f"{getattr(obj, '__qualname__', '<function>')}\"` under [project.entry-points."
            f"\"{registry.REWARD_GROUP}\"] in pyproject.toml and install the package (pip "
            f"install -e .). Installed: {', '.join(sorted(declared)) or 'none'}")
    try:
        loaded = rewards.resolve_function(name)
    except rewards.RewardError as exc:
        raise ConformanceError(str(exc)) from exc
    if loaded is not obj:
        raise ConformanceError(f"the entry point {declared[name].origin} loads {loaded!r}, not "
                               f"{obj!r}")


def _score(fn: Callable, name: str, samples: list) -> torch.Tensor:
    """The scores of `samples` as training checks them (FunctionReward)."""
    prompts, completions = [p for p, _ in samples], [c for _, c in samples]
    try:
        return rewards.FunctionReward(fn, f"'{name}'")(prompts, completions)
    except rewards.RewardError as exc:
        raise ConformanceError(str(exc)) from exc
