"""Completion log-probabilities from a causal LM, without materialising its logits.

The model's trunk gives the final hidden states h [R, T, H]; position t predicts token
t + 1. Only the positions that predict a completion token are gathered (prompt and
padding positions cost nothing), and `prefopt.kernels.token_logprobs` turns them and the
LM head weight W [V, H] into log π(token) and the entropy, never forming the
[tokens x vocabulary] logits. Tied embeddings need nothing special: the head's weight is
the embedding matrix, the same Parameter, and its gradient flows to both uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.kernels import token_logprobs
from prefopt.models import base_model

# Config attributes of architectures whose logits are not plain W h. Such heads would need
# the transform inside the kernel; refuse them rather than compute wrong log-probs.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling",
                     "output_multiplier_scale")


@dataclass
class SequenceLogps:
    """Per-sequence sums over completion tokens, for R sequences."""

    logps: torch.Tensor  # [R] Σ_t log π(y_t | x, y_<t)
    tokens: torch.Tensor  # [R] number of completion tokens
    entropy: torch.Tensor  # [R] Σ_t H(π(· | x, y_<t)); detached unless asked for
    token_logps: torch.Tensor | None = None  # [R, T-1], zero off the completion
    hidden: torch.Tensor | None = None  # [R, T, H] final hidden states, if kept (value heads)


def lm_head_weight(model) -> torch.Tensor:
    model = base_model(model)  # through a LoRA wrapper to the transformers model
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no linear LM head (get_output_embeddings)")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: LM heads with a bias are not supported by "
                         "the fused log-prob path")
    for name in _LOGIT_TRANSFORMS:
        value = getattr(model.config, name, None)
        if value not in (None, 1, 1.0, 0, 0.0):
            raise ValueError(f"{type(model).__name__} transforms its logits "
                             f"(config.{name}={value}); the fused log-prob path computes "
                             "plain W h logits and does not support it")
    return head.weight


def trunk_hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
    """Final hidden states [R, T, H] (after the last norm), from the model without its head."""
    trunk = base_model(model).base_model  # e.g. LlamaModel: the decoder without its head
    out = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out[0]


def _kernel_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the plain logits matmul would run in: autocast's, else the weight's."""
    if torch.is_autocast_enabled(hidden.device.type):
        return torch.get_autocast_dtype(hidden.device.type)
    return weight.dtype


def completion_logps(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                     impl: str = "auto", entropy_grad: bool = False,
                     token_level: bool = False, keep_hidden: bool = False) -> SequenceLogps:
    """Log-probs of the completion tokens marked by `batch["completion_mask"]`, at
    `temperature` (log softmax(W h / T)). `token_level` adds the per-token values,
    `keep_hidden` the trunk's hidden states (a value head on the policy reads them)."""
    hidden = trunk_hidden_states(model, batch["input_ids"], batch["attention_mask"])
    weight = lm_head_weight(model)
    predicts_completion = batch["completion_mask"][:, 1:]
    rows, positions = predicts_completion.nonzero(as_tuple=True)
    dtype = _kernel_dtype(hidden, weight)
    logp, entropy = token_logprobs(hidden[rows, positions].to(dtype), weight.to(dtype),
                                   batch["input_ids"][rows, positions + 1],
                                   temperature=temperature, return_entropy=True, impl=impl)
    if not entropy_grad:
        entropy = entropy.detach()
    n_seq = hidden.shape[0]
    zeros = torch.zeros(n_seq, dtype=torch.float32, device=hidden.device)
    token_logps = None
    if token_level:
        token_logps = torch.zeros(predicts_completion.shape, dtype=torch.float32,
                                  device=hidden.device).index_put((rows, positions), logp)
    return SequenceLogps(logps=zeros.index_add(0, rows, logp),
                         tokens=predicts_completion.sum(1),
                         entropy=zeros.index_add(0, rows, entropy),
                         token_logps=token_logps, hidden=hidden if keep_hidden else None)
