"""Online RL: the policy learns from its own samples.

- `module`: `OnlineModule`, one rollout per step, then the objective's epochs over it;
- `rollout`: sampling completions of a batch of prompts;
- `value`: value functions (a head on the policy's trunk, or a trunk of its own);
- `rewards`: reward sources (entry-point functions, dotted paths, trained reward models)
  and the missing-EOS penalty.

The RL math plugins call (advantages, KL estimators, GAE) is `prefopt.rl`, beside the
plugin contract: plugins import it without loading this package. Names resolve on first
use (lazy_loader).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "module": ["OnlineModule"],
    "rewards": ["FunctionReward", "ModelReward", "RewardConfig", "RewardError",
                "apply_missing_eos_penalty", "build_reward"],
    "rollout": ["Rollout", "RolloutConfig", "sample"],
    "value": ["SeparateValueModel", "ValueHead", "build_value_model", "token_values"],
})
