"""Value functions for PPO: a head on the policy's trunk, or a separate trunk of its own.

V(s_t) estimates the return from the state before completion token t + 1 is sampled, read
at the same positions as the token log-probs ([R, T-1]: position t predicts token t + 1).
A shared head costs one linear layer, and the value loss also shapes the policy's trunk;
a separate model (a copy of the initial policy's trunk, as in Ouyang et al., 2022, who
start the value function from the reward model) keeps the two apart at twice the trunk.
"""

from __future__ import annotations

import copy

import torch

from prefopt.models import base_model
from prefopt.objective import ValueModel


class ValueHead(torch.nn.Module):
    """V = w·h + b on final hidden states. Zero-initialised: V ≡ 0 at the start, so the
    first advantages are the rewards themselves rather than noise from a random head."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # In the head's own dtype, not autocast's: under bf16-mixed the values (which feed
        # GAE and the value loss) stay fp32, and the rollout's fp32 buffers can hold them.
        with torch.autocast(hidden.device.type, enabled=False):
            return self.linear(hidden.to(self.linear.weight.dtype)).float().squeeze(-1)


class SeparateValueModel(torch.nn.Module):
    """A trunk of its own (copied from the policy as it is now) with a ValueHead."""

    def __init__(self, policy):
        super().__init__()
        self.trunk = copy.deepcopy(base_model(policy).base_model)
        self.trunk.requires_grad_(True)
        self.head = ValueHead(self.trunk.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask,
                            use_cache=False)[0]
        return self.head(hidden)


def build_value_model(kind: ValueModel | None, policy) -> torch.nn.Module | None:
    """The value model an objective's `needs().value_model` asks for (None: none)."""
    if kind is None:
        return None
    if ValueModel(kind) == ValueModel.shared:
        return ValueHead(base_model(policy).config.hidden_size)
    return SeparateValueModel(policy)


def token_values(value_model, batch: dict[str, torch.Tensor], hidden: torch.Tensor | None
                 ) -> torch.Tensor:
    """V(s_t) [R, T-1] at the positions that predict a token, zero off the completion."""
    if isinstance(value_model, ValueHead):
        values = value_model(hidden)
    else:
        values = value_model(batch["input_ids"], batch["attention_mask"])
    return values[:, :-1] * batch["completion_mask"][:, 1:]
