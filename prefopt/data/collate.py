"""Collating encoded groups into one batch: every completion of every prompt in one forward.

Rows are group-major: the completions of group 0 (for a pair: chosen, then rejected), then
those of group 1, and so on. `group` and `slot` say which prompt and which completion each
row is. With `mismatched=True` one more row per group pairs its prompt with the first
completion of the next group (slot -1): KTO's estimate of the KL reference point.
`row_hashes` identify every row by its tokens (`prefopt.reference_memo`).
"""

from __future__ import annotations

import torch

from prefopt.data.tokenize import EncodedGroup
from prefopt.reference_memo import row_key

MISMATCHED_SLOT = -1
# The per-row tensors of a batch, what a forward pass and the log-probs read.
ROW_KEYS = ("input_ids", "attention_mask", "completion_mask")
# Each row's two 64-bit token hashes (`prefopt.reference_memo.row_key`): [R, 2] int64.
ROW_HASHES = "row_hashes"


def right_padded(rows: list[tuple[list[int], list[int]]], pad_id: int
                 ) -> dict[str, torch.Tensor]:
    """(prompt, completion) token lists as rows prompt + completion, right-padded, with
    `completion_mask` on the completion's tokens."""
    # One tensor built from padded lists and masks by comparison: a per-row tensor
    # assignment costs more than the whole small model's step saves elsewhere.
    lengths = [len(p) + len(c) for p, c in rows]
    width = max(lengths)
    input_ids = torch.tensor([p + c + [pad_id] * (width - n) for (p, c), n in zip(rows, lengths)],
                             dtype=torch.long)
    positions = torch.arange(width)
    ends = torch.tensor(lengths)[:, None]
    starts = torch.tensor([len(p) for p, _ in rows])[:, None]
    inside = positions < ends
    return {"input_ids": input_ids, "attention_mask": inside.long(),
            "completion_mask": inside & (positions >= starts)}


def left_padded(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts left-padded: all end where generation starts."""
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def collate_groups(groups: list[EncodedGroup], pad_id: int, mismatched: bool = False
                   ) -> dict[str, torch.Tensor]:
    rows: list[tuple[list[int], list[int]]] = []
    group_index, slot_index, ranks = [], [], []
    for g, group in enumerate(groups):
        for s, completion in enumerate(group.completions):
            rows.append((group.prompt, completion))
            group_index.append(g)
            slot_index.append(s)
            ranks.append(group.ranks[s] if group.ranks is not None else 0)
    if mismatched:
        if len(groups) < 2:
            raise ValueError("a batch of 1 cannot form mismatched prompt/completion pairs "
                             "(KTO's KL estimate): use data.batch_size >= 2")
        for g, group in enumerate(groups):
            rows.append((group.prompt, groups[(g + 1) % len(groups)].completions[0]))
            group_index.append(g)
            slot_index.append(MISMATCHED_SLOT)
            ranks.append(0)
    batch = {**right_padded(rows, pad_id), "group": torch.tensor(group_index),
             "slot": torch.tensor(slot_index), "ranks": torch.tensor(ranks),
             # The rows' token hashes, for the reference memo (which the
             # training module keeps on the host, where it looks them up).
             ROW_HASHES: torch.tensor([row_key(p, c) for p, c in rows], dtype=torch.long)}
    if groups and groups[0].label is not None:
        batch["labels"] = torch.tensor([bool(g.label) for g in groups])
    if groups and groups[0].attributes is not None:
        # Attributed records: [G, A] in schema order, NaN where a record lacks a value.
        batch["attributes"] = torch.tensor([list(g.attributes) for g in groups],
                                           dtype=torch.float32)
    if groups and groups[0].ref_logps is not None:
        # Cached reference log-probs, per row; mismatched rows never use a cache.
        cached = [v for g in groups for v in g.ref_logps]
        cached += [float("nan")] * (len(rows) - len(cached))
        batch["ref_logps"] = torch.tensor(cached, dtype=torch.float32)
    batch["margins"] = torch.tensor([g.margin if g.margin is not None else 0.0 for g in groups],
                                    dtype=torch.float32)
    return batch
