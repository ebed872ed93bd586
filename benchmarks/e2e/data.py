"""The benchmark's preference pairs: random token ids, the same for every provider.

Each pair is a prompt of `shape.prompt_len` tokens and two completions (chosen, rejected)
that fill the sequence to `shape.seq_len` tokens and end in EOS, as both trainers'
tokenisation would end them. Ids avoid the special ones (pad 0, bos 1, eos 2).
"""

from __future__ import annotations

import torch
from shapes import Shape

EOS_ID = 2
FIRST_ORDINARY_ID = 3


def random_pairs(shape: Shape, vocab_size: int, n_pairs: int, seed: int
                 ) -> list[tuple[list[int], list[int], list[int]]]:
    """n_pairs (prompt, chosen, rejected) id lists."""
    generator = torch.Generator().manual_seed(seed)
    completion_len = shape.seq_len - shape.prompt_len

    def ids(n: int) -> list[int]:
        return torch.randint(FIRST_ORDINARY_ID, vocab_size, (n,), generator=generator).tolist()

    return [(ids(shape.prompt_len), ids(completion_len - 1) + [EOS_ID],
             ids(completion_len - 1) + [EOS_ID]) for _ in range(n_pairs)]
