"""Collating encoded pairs: chosen and rejected stacked into one batch for one forward."""

from __future__ import annotations

import torch

from prefopt.data.tokenize import EncodedPair


def collate_pairs(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of 2B rows: rows [0, B) are prompt+chosen, [B, 2B) prompt+rejected.

    `completion_mask` marks the completion tokens: the only tokens whose log-probabilities
    count. Prompt and padding tokens are context or nothing.
    """
    sequences = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    prompt_lengths = [len(p.prompt) for p in pairs] * 2
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    completion_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (seq, n_prompt) in enumerate(zip(sequences, prompt_lengths)):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
        completion_mask[row, n_prompt:len(seq)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "completion_mask": completion_mask}
