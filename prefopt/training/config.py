"""The typed schema of `prefopt-train`'s config, registered in Hydra's ConfigStore.

The primary config (conf/train.yaml) extends `train_schema`, so Hydra checks types and
refuses unknown keys everywhere: a typo in an override is an error, never a silent
default. `trainer` and `logger` are open mappings of Lightning arguments, but still in
Hydra's struct mode: a new key needs an explicit `+trainer.key=value`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from prefopt.data.datamodule import DataConfig
from prefopt.models import ModelConfig
from prefopt.online.rewards import RewardConfig
from prefopt.online.rollout import RolloutConfig
from prefopt.training.optim import OptimizerConfig, SchedulerConfig


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
    """Online objectives (reinforce, ppo): how completions are sampled."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Online objectives: what scores the samples (group `reward`: synthetic, model)."""
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
    ckpt_path: Optional[str] = None
    """Resume from a checkpoint: `last` (<output_dir>/checkpoints/last.ckpt) or a path."""
    progress_bar: ProgressBar = ProgressBar.rich
    """The progress bar while training, when trainer.enable_progress_bar is true."""
    export_policy: bool = True
    """Save the final policy and tokenizer to <output_dir>/policy with save_pretrained."""


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
