"""AttributeLabeler: predictions back in the attributes' units, and what it refuses
(a trained attribute model end to end: tests/integration/test_steering.py)."""

import pytest
import torch

from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.models import ModelConfig, build_policy
from prefopt.steer.label import AttributeLabeler

SCHEMA = AttributeSchema([AttributeSpec("quality", 0, 4),
                          AttributeSpec("length", 1, 6),
                          AttributeSpec("tone", -1, 1, integer=False)])


@pytest.fixture
def labeler(tokenizer):
    torch.manual_seed(0)
    model = build_policy(ModelConfig(), tokenizer, reward_head=True, num_labels=len(SCHEMA))
    return AttributeLabeler(model, tokenizer, SCHEMA)


def test_labels_are_the_predictions_in_units_clipped_and_rounded(labeler, monkeypatch):
    raw = torch.tensor([[0.5, 1.3, 0.25], [-0.2, 0.55, 0.9]])
    monkeypatch.setattr(labeler.scorer, "outputs", lambda prompts, responses, batch_size: raw)
    labels = labeler.label(["a", "b"], ["x", "y"])
    # By hand: quality 0 + 0.5 * 4 = 2; length 1 + 1.3 * 5 = 7.5 -> clipped to 6;
    # tone -1 + 0.25 * 2 = -0.5 (not rounded); quality -0.8 -> 0; length 3.75 -> 4;
    # tone -1 + 0.9 * 2 = 0.8.
    assert labels[0] == {"quality": 2.0, "length": 6.0, "tone": pytest.approx(-0.5)}
    assert labels[1] == {"quality": 0.0, "length": 4.0, "tone": pytest.approx(0.8)}


def test_predict_gives_one_output_per_attribute(labeler):
    predictions = labeler.predict(["sort 21", "sort 9"], ["12", "9"])
    assert predictions.shape == (2, len(SCHEMA)) and predictions.dtype == torch.float32
    assert labeler.model is labeler.scorer.model


def test_a_model_whose_outputs_do_not_match_its_schema_is_refused(tokenizer, tmp_path):
    model = build_policy(ModelConfig(), tokenizer, reward_head=True, num_labels=1)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    SCHEMA.save(tmp_path)
    with pytest.raises(ValueError, match="has 1 outputs but its schema 3 attributes"):
        AttributeLabeler.load(str(tmp_path))
