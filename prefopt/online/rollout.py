"""Sampling completions from the policy for online objectives.

Prompts (token ids rendered as in training: chat template and generation prompt) are
left-padded so that generation starts at the same column for all, and transformers'
`generate` samples `num_samples` completions of each (temperature, top-p, no top-k
truncation, no other logits processor: samples come from the policy's own distribution at
that temperature, the one whose log-probs the objectives compute; tested). A
completion ends at its first EOS, which it keeps (its log-prob is part of the sample,
and it is what the missing-EOS penalty looks for), or after `max_new_tokens`.

The rollout is then laid out as training batches are (`prefopt.data.collate.right_padded`):
each row the prompt then the completion, right-padded, with `completion_mask` on the completion.
With right padding and a causal mask, padding after a sequence cannot change any of its
log-probs, so log-probs of a sample do not depend on the rest of its batch (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from prefopt.data.collate import left_padded, right_padded
from prefopt.data.records import Text

# Dynamic sampling's draws per step are numbered below this (their seeds depend on it).
MAX_DRAWS = 1000


@dataclass
class RolloutConfig:
    num_samples: int = 4
    """Completions sampled per prompt (k); leave-one-out and group baselines need k >= 2."""
    max_new_tokens: int = 16
    """Longest completion, in tokens; one that has not ended by then is cut (no EOS)."""
    temperature: float = 1.0
    """Sampling temperature; log-probs are taken at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling: 1 samples from the whole distribution."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop the prompts whose samples all scored the same (a
    group baseline gives them zero advantage) and sample more prompts until the batch
    is full again."""
    max_resample_rounds: int = 3
    """Dynamic sampling's cap: at most this many extra draws of data.batch_size prompts
    per step; when it is hit the step trains on the groups it has (logged)."""


@dataclass
class Rollout:
    """R = prompts x k completions, rows prompt-major (prompt 0's k samples first)."""

    batch: dict[str, torch.Tensor]  # input_ids, attention_mask, completion_mask [R, T]; group [R]
    prompts: list[Text]  # [R] the record's prompt of each row
    completions: list[str]  # [R] decoded, special tokens removed
    ended: torch.Tensor  # [R] bool: the completion ended with EOS
    lengths: torch.Tensor  # [R] completion tokens (EOS included)


def check_config(cfg: RolloutConfig) -> None:
    for name in ("num_samples", "max_new_tokens", "temperature"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"rollout.{name} must be > 0, got {getattr(cfg, name)}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise ValueError(f"rollout.top_p must be in (0, 1], got {cfg.top_p}")
    if not 0 <= cfg.max_resample_rounds < MAX_DRAWS:
        raise ValueError(f"rollout.max_resample_rounds must be in [0, {MAX_DRAWS}), got "
                         f"{cfg.max_resample_rounds}")
    if cfg.dynamic_sampling and cfg.num_samples < 2:
        raise ValueError("rollout.dynamic_sampling compares the rewards of a prompt's "
                         f"samples: it needs rollout.num_samples >= 2, got {cfg.num_samples}")


def select_groups(rollout: Rollout, groups: list[int]) -> Rollout:
    """The rows of the prompts `groups` (their order kept), renumbered 0..len(groups)-1."""
    group = rollout.batch["group"]
    rows = [r for g in groups for r in (group == g).nonzero().flatten().tolist()]
    index = torch.tensor(rows, dtype=torch.long, device=group.device)
    renumber = {g: i for i, g in enumerate(groups)}
    batch = {key: value[index] for key, value in rollout.batch.items()}
    batch["group"] = torch.tensor([renumber[int(group[r])] for r in rows],
                                  device=group.device)
    return Rollout(batch=batch, prompts=[rollout.prompts[r] for r in rows],
                   completions=[rollout.completions[r] for r in rows],
                   ended=rollout.ended[index], lengths=rollout.lengths[index])


def concatenate(rollouts: list[Rollout], pad_token_id: int) -> Rollout:
    """One rollout of all the rows of `rollouts`, prompts numbered on, right-padded to
    the widest (padding after a row changes none of its log-probs)."""
    width = max(r.batch["input_ids"].shape[1] for r in rollouts)
    batch: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for r in rollouts:
        for key, value in r.batch.items():
            if key == "group":
                value = value + offset
            elif value.shape[1] < width:
                padded = value.new_full((value.shape[0], width),
                                        pad_token_id if key == "input_ids" else 0)
                padded[:, :value.shape[1]] = value
                value = padded
            batch.setdefault(key, []).append(value)
        offset += int(r.batch["group"].max()) + 1
    return Rollout(batch={key: torch.cat(values) for key, values in batch.items()},
                   prompts=[p for r in rollouts for p in r.prompts],
                   completions=[c for r in rollouts for c in r.completions],
                   ended=torch.cat([r.ended for r in rollouts]),
                   lengths=torch.cat([r.lengths for r in rollouts]))


def _cut_at_eos(tokens: list[int], eos_id: int) -> tuple[list[int], bool]:
    """The completion up to and including its first EOS, and whether there was one."""
    if eos_id in tokens:
        return tokens[:tokens.index(eos_id) + 1], True
    return tokens, False


@torch.no_grad()
def sample(model, tokenizer, prompts: list[Text], prompt_ids: list[list[int]],
           cfg: RolloutConfig, greedy: bool = False) -> Rollout:
    """`cfg.num_samples` completions of each prompt (one, greedy, with `greedy`)."""
    k = 1 if greedy else cfg.num_samples
    device = next(model.parameters()).device
    input_ids, attention_mask = left_padded(prompt_ids, tokenizer.pad_token_id)
    # A fresh GenerationConfig, not the model's: a checkpoint's own (repetition penalty,
    # top-k, min_new_tokens, ...) would make the samples come from another distribution
    # than the log-probs the objective computes. No minimum length either: a policy kept
    # from ending at once would drift its mass onto an EOS it is never shown to pay for.
    sampling = {} if greedy else {"temperature": cfg.temperature, "top_p": cfg.top_p}
    generation = GenerationConfig(
        max_new_tokens=cfg.max_new_tokens, do_sample=not greedy, top_k=0 if not greedy else None,
        num_return_sequences=k, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, **sampling)
    was_training = model.training
    model.eval()
    try:
        generated = model.generate(input_ids=input_ids.to(device),
                                   attention_mask=attention_mask.to(device),
                                   generation_config=generation)
    finally:
        model.train(was_training)
    new = generated[:, input_ids.shape[1]:].cpu().tolist()
    cut = [_cut_at_eos(tokens, tokenizer.eos_token_id) for tokens in new]
    completions = [tokens for tokens, _ in cut]
    group = [row // k for row in range(len(new))]
    batch = {**right_padded([(prompt_ids[g], c) for g, c in zip(group, completions)],
                            tokenizer.pad_token_id), "group": torch.tensor(group)}
    return Rollout(
        batch={key: value.to(device) for key, value in batch.items()},
        prompts=[prompts[g] for g in group],
        completions=tokenizer.batch_decode(completions, skip_special_tokens=True),
        ended=torch.tensor([ended for _, ended in cut], device=device),
        lengths=torch.tensor([len(c) for c in completions], device=device))
