"""The built-in objectives, one file each, with their formulas and papers in the
docstrings. They register through the same entry-point group as third-party objectives
(`prefopt.objectives` in pyproject.toml), and the core never imports them by name: the
registry loads the one a run selects."""

import lazy_loader

# Submodules resolve on first use, so `import prefopt.plugins` loads none of them.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=[
    "dpo", "ipo", "kto", "kwise", "ppo", "reinforce", "reward_models", "sft", "steerlm"])
