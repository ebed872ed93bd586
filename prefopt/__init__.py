"""prefopt: preference optimisation for language models.

The packages, bottom up (no import runs back up):

- `prefopt.objective` (the plugin contract and the table of batch formats),
  `prefopt.registry` (entry points -> Hydra configs), `prefopt.rl` (RL math for plugins);
- `prefopt.data` (records, tokenisation, collation, synthetic tasks), `prefopt.models`,
  `prefopt.logprobs` (through `prefopt.kernels`), `prefopt.reference_cache`,
  `prefopt.reference_memo`;
- `prefopt.training` (the offline module, the shared training machinery, `prefopt-train`)
  and `prefopt.online` (the online module, rollouts, value heads, reward sources);
- `prefopt.steer` (SteerLM attributes, labelling, reward-model scoring),
  `prefopt.generate`, `prefopt.evaluate`;
- `prefopt.testing`: the conformance kit plugin authors call from their tests;
- `prefopt.api`, whose names are also this package's: `train` (a run from Python, as
  `prefopt-train` runs it), `load_run`, `Run`, `objectives` (docs/api.md).

Built-in objectives live in `prefopt.plugins`, Hydra configs in `prefopt.conf`.
"""

import lazy_loader

from prefopt import _compat

# Submodules and the API resolve on first use: `import prefopt` stays light. `train` is
# the function; the module of one run is `prefopt.training.train`.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=[
    "api", "data", "evaluate", "generate", "kernels", "logprobs", "models", "objective",
    "online", "plugins", "reference_cache", "reference_memo", "registry", "rl", "steer",
    "testing", "training"],
    submod_attrs={"api": ["Run", "load_run", "objectives", "train"]})

_compat.install()
