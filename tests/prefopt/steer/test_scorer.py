"""A trained reward model is saved, loaded in one call, and scores as it did in training."""

import pytest
import torch

from prefopt.steer.scorer import RewardScorer


def test_scorer_reproduces_training_scores(compose, fast_overrides, tmp_path):
    from prefopt.data.collate import collate_groups
    from prefopt.training.train import build, train

    cfg = compose("objective=reward_bt", *fast_overrides)
    train(cfg)
    scorer = RewardScorer.load(str(tmp_path / "run" / "policy"))
    prompts, answers = ["sort 321", "reverse 9012"], ["123", "2109"]
    scores = scorer.score(prompts, answers)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # The same pairs through the training path's encoder and collation give the same scores.
    _, datamodule, tokenizer = build(cfg)
    from prefopt.data.records import Record
    from prefopt.data.tokenize import Encoder

    groups, _ = Encoder(tokenizer, datamodule.cfg).encode_all(
        [Record(p, (a,), "t", kind="unpaired") for p, a in zip(prompts, answers)])
    batch = collate_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        direct = scorer.model(input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"]).logits[:, 0]
    torch.testing.assert_close(scores, direct)


def test_scorer_refuses_a_language_model(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    # Loaded as a sequence classifier, a causal LM gets a fresh 2-label head: refused.
    with pytest.raises(ValueError, match="is not a scalar reward model"):
        RewardScorer.load(str(tmp_path))
