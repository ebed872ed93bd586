"""reference=cached: same results as a reference model, reused, invalidated by changes."""

import json

import pytest

from prefopt import reference_cache
from prefopt.data.tokenize import EncodedGroup
from prefopt.models import ModelConfig


def run(compose, fast_overrides, tmp_path, name, *overrides):
    from prefopt.training.train import train

    out = tmp_path / name
    result = train(compose(*fast_overrides, "export_policy=false", f"output_dir={out}",
                           *overrides))
    cache = out / "reference_cache.json"
    return result, json.loads(cache.read_text()) if cache.exists() else None


def test_cached_equals_model_then_reused_then_invalidated(compose, fast_overrides, tmp_path):
    cache = f"reference_cache_dir={tmp_path / 'cache'}"
    plain, _ = run(compose, fast_overrides, tmp_path, "model")
    first, used = run(compose, fast_overrides, tmp_path, "cached", "reference=cached", cache)
    assert not used["train"]["reused"] and not used["val"]["reused"]
    for key in ("val/loss", "val/rewards/accuracies", "val/kl"):
        assert first["end"][key] == pytest.approx(plain["end"][key], rel=1e-5, abs=1e-6)

    _, again = run(compose, fast_overrides, tmp_path, "again", "reference=cached", cache)
    assert again["train"] == {**used["train"], "reused": True}

    # Truncation changes the encoded records, so the key changes: computed anew.
    _, truncated = run(compose, fast_overrides, tmp_path, "trunc", "reference=cached", cache,
                       "data.max_length=17")
    assert not truncated["train"]["reused"]
    assert truncated["train"]["path"] != used["train"]["path"]
    # So does another rendering of the same records (no chat template).
    _, plain_text = run(compose, fast_overrides, tmp_path, "plain", "reference=cached", cache,
                        "data.chat_template=false")
    assert not plain_text["train"]["reused"]


def test_key_covers_tokenizer_model_and_data(tokenizer):
    from prefopt.tiny import build_tokenizer

    groups = [EncodedGroup([1, 5, 6], ([7, 2], [8, 2]))]
    key = reference_cache.cache_key(ModelConfig(), 0, tokenizer, groups)
    assert key == reference_cache.cache_key(ModelConfig(), 0, build_tokenizer(), groups)
    other_tokenizer = build_tokenizer()
    other_tokenizer.add_tokens(["<extra>"])  # same ids for these records, another tokenizer
    assert key != reference_cache.cache_key(ModelConfig(), 0, other_tokenizer, groups)
    templated = build_tokenizer()
    templated.chat_template = templated.chat_template.replace("<|", "[|")
    assert key != reference_cache.cache_key(ModelConfig(), 0, templated, groups)
    assert key != reference_cache.cache_key(ModelConfig(), 1, tokenizer, groups)  # seed
    changed = [EncodedGroup([1, 5, 6], ([7, 2], [9, 2]))]
    assert key != reference_cache.cache_key(ModelConfig(), 0, tokenizer, changed)


@pytest.mark.parametrize("objective,message", [("kto", "pairs completions across a batch"),
                                               ("reward_bt", "uses no reference model")])
def test_objectives_that_cannot_use_a_cache(compose, objective, message):
    from prefopt.training.config import ConfigError
    from prefopt.training.train import build

    with pytest.raises(ConfigError, match=message):
        build(compose(f"objective={objective}", "reference=cached"))


def test_training_with_a_cache_holds_no_reference_model(compose):
    from prefopt.training.train import build

    module, _, _ = build(compose("reference=cached"))
    assert module.reference is None and module.reference_cached
