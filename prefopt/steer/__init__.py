"""Trained scorers: `scorer.RewardScorer` scores (prompt, completion) pairs with a reward
model trained by prefopt-train (reward_bt, reward_pl) or any model with a scalar head;
`label.AttributeLabeler` labels responses with an attribute model (attribute_model) for
SteerLM, and `prefopt-label` does it for a file. The attribute schema itself is part of the
attributed record format: `prefopt.data.attributes`. Names resolve on first use
(lazy_loader).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={
    "label": ["AttributeLabeler"],
    "scorer": ["RewardScorer"],
})
