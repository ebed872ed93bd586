"""The typed schema of `prefopt-train`'s config, registered in Hydra's ConfigStore.

The primary config (conf/train.yaml) extends `train_schema`, so Hydra checks types and
refuses unknown keys everywhere: a typo in an override is an error, never a silent
default. `trainer` and `logger` are open mappings of Lightning arguments, but still in
Hydra's struct mode: a new key needs an explicit `+trainer.key=value`. A `+` lets Hydra
add any key, though, so `check_keys` refuses, after composition, a key that no schema
dataclass declares and a `trainer.*` key that pytorch_lightning.Trainer does not take.

`imply_groups` makes the keys of one preset choose it (`data.path=x` -> `data=files`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from prefopt.data.datamodule import DataConfig
from prefopt.models import ModelConfig
from prefopt.online.rewards import RewardConfig
from prefopt.online.rollout import RolloutConfig
from prefopt.training.optim import OptimizerConfig, SchedulerConfig
from prefopt.training.samples import SamplesConfig


class ConfigError(ValueError):
    """Settings that cannot work together (e.g. reference=cached for an objective that
    samples its completions); the message names the setting and the fix."""


class ProgressBar(str, enum.Enum):
    rich = "rich"  # Lightning's RichProgressBar: metrics in a live table under the bar
    tqdm = "tqdm"  # Lightning's default bar, one line (friendlier to log files)


class ReferenceMode(str, enum.Enum):
    model = "model"  # a frozen reference model computes log-probs at every step
    cached = "cached"  # computed once before training, stored on disk, reused


@dataclass
class TrainConfig:
    objective: Any = MISSING
    """The selected objective's Config (group `objective`, one entry per plugin)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of pytorch_lightning.Trainer."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    """Lightning loggers by name, each instantiated from its `_target_`."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Online objectives (reinforce, ppo, grpo): how completions are sampled, and DAPO's
    dynamic sampling."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Online objectives: what scores the samples (group `reward`: synthetic, model)."""
    online: bool = False
    """Train a pairwise objective (dpo, ipo, ...) online: pairs sampled from the policy
    and judged by the reward source at every step (online DPO; prefopt.online.pairs),
    with `rollout.*` and `reward.*`."""
    seed: int = 0
    output_dir: str = "${hydra:runtime.output_dir}"
    """Where the run writes config.yaml, metrics.csv, checkpoints/ and policy/."""
    logprob_impl: str = "auto"
    """prefopt.kernels implementation: auto (Triton on CUDA, torch elsewhere), triton, torch."""
    reference: ReferenceMode = ReferenceMode.model
    """Reference log-probs: `model` (every step) or `cached` (once, on disk; the reference
    model is not kept in memory for training)."""
    reference_cache_dir: Optional[str] = None
    """Where cached reference log-probs live; empty: $PREFOPT_CACHE_DIR or ~/.cache/prefopt."""
    reference_reuse: bool = True
    """reference=model: the reference's summed log-probs of a sequence it scored are kept in
    memory and reused when the same tokens come again (the held-out set at every
    validation; training data past its first epoch). false: score them every time."""
    ckpt_path: Optional[str] = None
    """Resume from a checkpoint: `last` (<output_dir>/checkpoints/last.ckpt) or a path."""
    progress_bar: ProgressBar = ProgressBar.rich
    """The progress bar while training, when trainer.enable_progress_bar is true."""
    export_policy: bool = True
    """Save the final policy and tokenizer to <output_dir>/policy with save_pretrained."""
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    """Offline objectives: greedy completions of the first validation prompts at every
    validation, into <output_dir>/samples.jsonl (samples.count=0: none)."""


# Keys that only one option of a config group uses: given without choosing the group,
# they choose it, so that `data.path=x` does not train on the synthetic task's settings.
IMPLIED_GROUPS = {
    "data": ("files", ("path", "mix", "columns", "split", "val_path", "val_split",
                       "val_fraction")),
    "model": ("hf", ("name_or_path", "revision", "trust_remote_code")),
}


def _override_key(override: str) -> str | None:
    """The key an override sets (`+data.path=x` -> `data.path`), or None for a flag."""
    if override.startswith("-") or "=" not in override and not override.startswith("~"):
        return None
    return override.split("=", 1)[0].lstrip("+~")


def imply_groups(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(`overrides` with `data=files` / `model=hf` added where a key only that option uses
    is given and the group is not chosen, the notes that say so). A choice of the group in
    any form (`data=...`, `+data=...`, `data@pkg=...`, `~data`) is left alone; `key=null`
    implies nothing; sweep values (`data.path=a.jsonl,b.jsonl`) imply it like one value."""
    keys = [k for k in map(_override_key, overrides) if k is not None]
    out, notes = list(overrides), []
    for group, (option, only) in IMPLIED_GROUPS.items():
        if any(k == group or k.startswith(group + "@") for k in keys):
            continue
        for override in overrides:
            key = _override_key(override)
            name = key.removeprefix(group + ".").split(".")[0] if key else None
            if key and key.startswith(group + ".") and name in only and \
                    override.split("=", 1)[-1].strip() != "null":
                # Beside the key, not at the end: Hydra reads the overrides as one run of
                # arguments, which a flag after them (`--cfg job`) would split.
                out.insert(out.index(override), f"{group}={option}")
                notes.append(f"{key} given: using {group}={option} (choose another with "
                             f"{group}=<name>)")
                break
    return out, notes


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# -- keys no schema declares ---------------------------------------------------------------

def _schema_type(hint) -> tuple[type | None, bool]:
    """(the dataclass a field's type hint declares, whether the field is a list of them);
    (None, False) for anything else: scalars, and the open mappings (`Any`, `dict`) whose
    keys are not prefopt's to check (trainer, logger, scheduler.kwargs, reward.kwargs and
    the objective, which its plugin's Config checks)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return None, False
        hint = args[0]
    if typing.get_origin(hint) is list:
        args = typing.get_args(hint)
        hint, many = (args[0] if args else None), True
    else:
        many = False
    return (hint, many) if dataclasses.is_dataclass(hint) else (None, False)


@functools.cache
def _fields(schema: type) -> dict[str, tuple[type | None, bool]]:
    hints = typing.get_type_hints(schema)
    return {f.name: _schema_type(hints[f.name]) for f in dataclasses.fields(schema)}


def _unknown_key(node: DictConfig, schema: type, path: str) -> str | None:
    """The message for the first key of `node` (at `path`, '' for the root) that `schema`
    does not declare, looking into every node a field types as a dataclass; None if all
    are declared. Values are not resolved: a missing one (`???`) or an interpolation is
    not looked into."""
    fields = _fields(schema)
    for key in node.keys():
        key = str(key)
        full = f"{path}.{key}" if path else key
        if key not in fields:
            where = path or "the config"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = (f"did you mean {path + '.' if path else ''}{close[0]}?" if close
                    else f"its settings: {', '.join(fields)}")
            return f"{full} is not a setting of {where} ({hint}); remove it"
        child_schema, many = fields[key]
        if child_schema is None or OmegaConf.is_missing(node, key) or \
                OmegaConf.is_interpolation(node, key):
            continue
        child = node[key]
        items = (list(enumerate(child)) if many and isinstance(child, ListConfig)
                 else [(None, child)])
        for index, item in items:
            if isinstance(item, DictConfig):
                found = _unknown_key(item, child_schema,
                                     full if index is None else f"{full}[{index}]")
                if found:
                    return found
    return None


def _trainer_arguments() -> list[str]:
    import pytorch_lightning as pl  # heavy: only when a run is checked

    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name, p in inspect.signature(pl.Trainer.__init__).parameters.items()
            if name != "self" and p.kind in kinds]


def check_keys(cfg: DictConfig) -> None:
    """Refuse a key that `+` added where no schema dataclass declares it
    (`+data.max_lenght=64` would sit beside data.max_length, unread) and a `trainer.*` key
    that pytorch_lightning.Trainer does not take (Lightning would stop with a TypeError
    after the run directory is set up): one ConfigError naming the full key, with the
    closest declared one."""
    problem = _unknown_key(cfg, TrainConfig, "")
    if problem:
        raise ConfigError(problem)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return
    accepted = _trainer_arguments()
    for key in trainer.keys():
        key = str(key)
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean trainer.{close[0]}?)" if close else ""
            raise ConfigError(f"trainer.{key} is not an argument of "
                              f"pytorch_lightning.Trainer{hint}; remove it")
