"""Reference log-probs reused within a run: the frozen reference scores a sequence once.

The reference model never changes while the policy trains, so Σ_t log π_ref(y_t | x, y_<t)
of a row (prompt + completion tokens) is a function of its tokens alone. A run that sees
its data more than once (a second epoch; the held-out set at every validation) would
compute each value again: `ReferenceMemo` keeps the values it was given, keyed by the
row's tokens (`row_key`, computed when the batch is collated), and hands them back, so a
batch whose rows were all scored before needs no reference forward at all, and one with a
few new rows scores only those.

The values kept are exactly those computed (float32, never recomputed), so a run with the
memo logs and trains the same numbers as one without, up to the last bits of the padded
width a row was first scored at. Keys are two independent 64-bit hashes of the tokens
(a false match needs both to collide: ~n² / 2^128 for n rows). Lookups happen on the host,
values stay on the device: no device sync. At most `max_rows` rows are kept (~0.2 KB of
host memory each); later rows are scored every time.
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

RowKey = tuple[int, int]
# ~400 MB of host memory at the most (keys and their dict entries).
MAX_ROWS = 2_000_000


def row_key(prompt: Sequence[int], completion: Sequence[int]) -> RowKey:
    """Two independent 64-bit hashes of a row's tokens (ints hash the same in every
    process: no PYTHONHASHSEED dependence). The prompt's length is in both, so a token
    moved across the prompt/completion boundary is another row."""
    prompt, completion = tuple(prompt), tuple(completion)
    return hash((prompt, completion)), hash((completion, len(prompt), prompt))


class ReferenceMemo:
    """Σ log π_ref per row, by row key, on the device the values were computed on."""

    def __init__(self, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows
        self.slots: dict[Hashable, int] = {}
        self.values: torch.Tensor | None = None  # [capacity] float32
        self.reused = 0  # rows answered from the memo
        self.computed = 0  # rows the reference scored

    def _store(self, keys: Sequence[Hashable], values: torch.Tensor) -> list[int | None]:
        """Slots of `keys` after keeping `values` (None where the memo is full)."""
        slots: list[int | None] = []
        for key in keys:
            slot = self.slots.get(key)
            if slot is None and len(self.slots) < self.max_rows:
                slot = self.slots[key] = len(self.slots)
            slots.append(slot)
        kept = [i for i, s in enumerate(slots) if s is not None]
        if not kept:
            return slots
        needed = len(self.slots)
        if self.values is None:
            self.values = torch.empty(0, dtype=torch.float32, device=values.device)
        self.values = self.values.to(values.device)
        if needed > self.values.numel():  # grow by doubling: amortised O(1) per row
            grown = torch.empty(max(needed, 2 * self.values.numel(), 1024),
                                dtype=torch.float32, device=values.device)
            grown[:self.values.numel()] = self.values
            self.values = grown
        where = torch.tensor([slots[i] for i in kept], device=values.device)
        self.values[where] = values.detach().float()[torch.tensor(kept, device=values.device)]
        return slots

    def logps(self, keys: Sequence[Hashable], compute: Callable[[list[int]], torch.Tensor],
              device: torch.device) -> torch.Tensor:
        """[len(keys)] Σ log π_ref per row: kept values where the memo has them, and
        `compute(rows)` ([len(rows)], the reference's values of those row indices) for the
        others, which are then kept."""
        slots = [self.slots.get(key) for key in keys]
        missing = [i for i, s in enumerate(slots) if s is None]
        computed = compute(missing).detach() if missing else None
        # Validation runs under inference mode, training does not: the kept values must
        # be an ordinary tensor, which both may read and write.
        with torch.inference_mode(False):
            return self._assemble(keys, slots, missing, computed, device)

    def _assemble(self, keys, slots, missing, computed, device) -> torch.Tensor:
        self.reused += len(keys) - len(missing)
        self.computed += len(missing)
        if missing:
            computed = computed.float().clone()  # an inference tensor becomes an ordinary one
            stored = self._store([keys[i] for i in missing], computed)
            for i, slot in zip(missing, stored):
                slots[i] = slot
            unkept = [j for j, slot in enumerate(stored) if slot is None]
            if unkept:  # the memo is full: these rows come from `computed` alone
                on = computed.device
                out = torch.empty(len(keys), dtype=torch.float32, device=on)
                have = [i for i, slot in enumerate(slots) if slot is not None]
                if have:
                    out[torch.tensor(have, device=on)] = self.values[
                        torch.tensor([slots[i] for i in have], device=on)]
                out[torch.tensor([missing[j] for j in unkept], device=on)] = \
                    computed[torch.tensor(unkept, device=on)]
                return out.to(device)
        return self.values[torch.tensor(slots, device=self.values.device)].to(device)
