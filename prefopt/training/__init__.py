"""Offline training and what both training modules share.

- `module`: `PreferenceModule`, the LightningModule that feeds recorded batches to an
  objective (its loss input from `prefopt.objective.FORMATS`);
- `policy`: `PolicyModule`, the part the offline and online modules share (policy and
  reference log-probs, metric logging, optimizer);
- `metrics`: means across devices, weighted right, and the finiteness check;
- `optim`: AdamW, its schedule and gradient clipping;
- `config`: the typed schema of `prefopt-train`'s config; `train`: one run (build, fit,
  export, report); `rundir`: the run directory's rules (a lock, resume from its own
  config.yaml, nothing overwritten); `checkpoints`: last.ckpt at every validation, written
  atomically; `cli`: the console scripts; `progress`, `plots`: the bar and the curves.

Names resolve on first use (lazy_loader): `prefopt.online` builds on `policy`, `metrics`
and `optim`, while `train` builds on the online module, so nothing here is imported
eagerly; it also keeps `prefopt-train --help` from loading Lightning.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "config": ["ConfigError", "TrainConfig", "register_schema"],
    "metrics": ["MetricLog", "NonFiniteError"],
    "module": ["PreferenceModule"],
    "optim": ["OptimizerConfig", "SchedulerConfig"],
    "policy": ["PolicyModule"],
    "train": ["build"],
})
