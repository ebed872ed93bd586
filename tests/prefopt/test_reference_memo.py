"""ReferenceMemo: values kept by the rows' tokens, handed back without a second forward."""

import pytest
import torch

from prefopt.reference_memo import ReferenceMemo, row_key


class _Reference:
    """Stands in for the reference: row i of a batch scores `truth[key]`, and every call
    records which rows it was asked for."""

    def __init__(self, truth):
        self.truth, self.calls = truth, []

    def compute_for(self, keys):
        def compute(rows):
            self.calls.append(list(rows))
            return torch.tensor([self.truth[keys[i]] for i in rows])
        return compute


def _keys(*rows):
    return [row_key(p, c) for p, c in rows]


def test_row_keys_follow_the_tokens_and_the_prompt_boundary():
    assert row_key([5, 6], [7]) == row_key((5, 6), (7,))  # lists or tuples alike
    assert row_key([5, 6], [7]) != row_key([5], [6, 7])  # a token moved across the boundary
    assert row_key([5, 6], [7]) != row_key([5, 6], [8])
    assert len({row_key([1], [i]) for i in range(1000)}) == 1000


def test_a_row_is_scored_once_and_later_batches_reuse_it_in_their_own_order():
    a, b, c = _keys(([1, 2], [3]), ([1, 2], [4]), ([9], [8, 7]))
    reference = _Reference({a: -1.5, b: -2.25, c: -0.5})
    memo = ReferenceMemo()
    first = memo.logps([a, b], reference.compute_for([a, b]), torch.device("cpu"))
    assert first.tolist() == [-1.5, -2.25]
    # b and a again, with one new row c: only c (row 1 of this batch) is scored.
    second = memo.logps([b, c, a], reference.compute_for([b, c, a]), torch.device("cpu"))
    assert second.tolist() == [-2.25, -0.5, -1.5]
    assert reference.calls == [[0, 1], [1]]
    third = memo.logps([c, c, b], reference.compute_for([c, c, b]), torch.device("cpu"))
    assert third.tolist() == [-0.5, -0.5, -2.25] and len(reference.calls) == 2
    assert (memo.reused, memo.computed) == (5, 3)  # 2 + 3 given back; 2 + 1 scored


def test_a_full_memo_scores_the_rows_it_cannot_keep_every_time():
    keys = _keys(*(([1], [i]) for i in range(5)))
    truth = {k: -float(i) for i, k in enumerate(keys)}
    reference = _Reference(truth)
    memo = ReferenceMemo(max_rows=3)
    for _ in range(2):
        out = memo.logps(keys, reference.compute_for(keys), torch.device("cpu"))
        assert out.tolist() == [0.0, -1.0, -2.0, -3.0, -4.0]
    assert reference.calls == [[0, 1, 2, 3, 4], [3, 4]]
    assert len(memo.slots) == 3


def test_many_rows_grow_the_store_and_keep_every_value():
    keys = _keys(*(([i], [i + 1]) for i in range(3000)))
    truth = {k: i / 7 for i, k in enumerate(keys)}
    memo = ReferenceMemo()
    for start in range(0, 3000, 700):  # batches crossing the first capacity (1024)
        batch = keys[start:start + 700]
        memo.logps(batch, _Reference(truth).compute_for(batch), torch.device("cpu"))
    reference = _Reference(truth)
    out = memo.logps(keys[::-1], reference.compute_for(keys[::-1]), torch.device("cpu"))
    assert reference.calls == []
    assert out.tolist() == pytest.approx([truth[k] for k in keys[::-1]])


def test_values_scored_under_inference_mode_serve_training_and_back():
    """Lightning validates under torch.inference_mode and trains outside it: the memo
    must accept a value from either and answer both (an inference tensor cannot be
    written outside inference mode)."""
    a, b = _keys(([1], [2]), ([3], [4]))
    reference = _Reference({a: -1.0, b: -2.0})
    memo = ReferenceMemo()
    with torch.inference_mode():
        memo.logps([a], reference.compute_for([a]), torch.device("cpu"))
    out = memo.logps([a, b], reference.compute_for([a, b]), torch.device("cpu"))
    assert out.tolist() == [-1.0, -2.0] and not out.is_inference()
    with torch.inference_mode():
        assert memo.logps([b, a], reference.compute_for([b, a]),
                          torch.device("cpu")).tolist() == [-2.0, -1.0]
