"""A shuffling sampler that a resumed run can re-enter exactly where it stopped.

The order of an epoch depends only on (seed, epoch), not on any random state that a
checkpoint would have to carry, and an iteration can start part-way into the epoch. So a
run resumed from a checkpoint taken after k batches of epoch e sees batch k+1 of epoch e
next, as an uninterrupted run would. Lightning calls `set_epoch` at every epoch start.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0
        self._start = 0

    @classmethod
    def for_trainer(cls, trainer, size: int, seed: int, shuffle: bool, batch_size: int
                    ) -> "ResumableSampler":
        """The training sampler; when `trainer` (Lightning's, or None) is resuming from a
        checkpoint, positioned after the batches its epoch had done."""
        sampler = cls(size, seed, shuffle)
        if trainer is not None and trainer.fit_loop.restarting:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            sampler.set_epoch(trainer.current_epoch)
            sampler.start_at(done * batch_size)
        return sampler

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, position: int) -> None:
        """Begin the next iteration at `position` of this epoch's order (once)."""
        self._start = position

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self):
        start, self._start = self._start, 0
        yield from self.order()[start:]

    def __len__(self) -> int:
        # The whole epoch, also when resuming part-way: Lightning counts the batches done.
        return self.size
