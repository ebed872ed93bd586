"""The built-in objectives, one file each, with their formulas and papers in the
docstrings. They register through the same entry-point group as third-party objectives
(`prefopt.objectives` in pyproject.toml), and the core never imports them by name: the
registry loads the one a run selects."""

__all__ = ["dpo", "ipo", "kto", "kwise", "ppo", "reinforce", "reward_models", "sft",
           "steerlm"]
