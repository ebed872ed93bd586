"""prefopt: preference optimisation for language models.

The packages, bottom up (no import runs back up):

- `prefopt.objective` (the plugin contract and the table of batch formats),
  `prefopt.registry` (entry points -> Hydra configs), `prefopt.rl` (RL math for plugins);
- `prefopt.data` (records, tokenisation, collation, synthetic tasks), `prefopt.models`,
  `prefopt.logprobs` (through `prefopt.kernels`), `prefopt.reference_cache`;
- `prefopt.training` (the offline module, the shared training machinery, `prefopt-train`)
  and `prefopt.online` (the online module, rollouts, value heads, reward sources);
- `prefopt.steer` (SteerLM attributes, labelling, reward-model scoring),
  `prefopt.generate`, `prefopt.evaluate`;
- `prefopt.testing`: the conformance kit plugin authors call from their tests.

Built-in objectives live in `prefopt.plugins`, Hydra configs in `prefopt.conf`.
"""

import lazy_loader

from prefopt import _compat

# Submodules resolve on first use: `import prefopt` stays light.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=[
    "data", "evaluate", "generate", "kernels", "logprobs", "models", "objective", "online",
    "plugins", "reference_cache", "registry", "rl", "steer", "testing", "training"])

_compat.install()
