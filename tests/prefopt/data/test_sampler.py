"""ResumableSampler: an epoch's order depends on (seed, epoch) only, and an iteration can
start part-way into it."""

import torch

from prefopt.data.sampler import ResumableSampler


def test_order_is_a_seeded_permutation_per_epoch():
    sampler = ResumableSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    # Independently: the same generator formula, seed * 1_000_003 + epoch.
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003))
    assert first == expected.tolist()
    assert list(sampler) == first  # the same epoch again: the same order
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(10))


def test_a_resumed_iteration_continues_where_the_epoch_stopped():
    whole = ResumableSampler(12, seed=5)
    whole.set_epoch(2)
    order = list(whole)
    resumed = ResumableSampler(12, seed=5)
    resumed.set_epoch(2)
    resumed.start_at(8)
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # only once: the next epoch's pass starts at 0
    assert len(resumed) == 12


def test_no_shuffle_keeps_the_records_order():
    assert list(ResumableSampler(4, seed=0, shuffle=False)) == [0, 1, 2, 3]
