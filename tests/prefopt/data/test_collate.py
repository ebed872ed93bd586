"""Padding: training rows right-padded, generation prompts left-padded."""

from prefopt.data.collate import left_padded, right_padded


def test_rows_are_prompt_then_completion_right_padded():
    batch = right_padded([([1, 2], [7, 8, 9]), ([3], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 7, 8, 9], [3, 4, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["completion_mask"].int().tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]


def test_prompts_are_left_padded_to_end_together():
    input_ids, attention_mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
