"""reference=cached: same results as a reference model, reused, invalidated by changes."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from prefopt import reference_cache
from prefopt.data.tokenize import EncodedGroup
from prefopt.models import ModelConfig
from prefopt.tiny import build_tokenizer


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


def test_a_truncated_cache_is_recomputed(compose, fast_overrides, tmp_path, caplog):
    """A cache file cut short (a full disk, a copy that died) is recomputed with a
    warning; the run ends as the one that wrote it."""
    cache = f"reference_cache_dir={tmp_path / 'cache'}"
    first, used = run(compose, fast_overrides, tmp_path, "first", "reference=cached", cache)
    for split in ("train", "val"):
        path = Path(used[split]["path"])
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="prefopt.reference_cache"):
        again, reused = run(compose, fast_overrides, tmp_path, "again", "reference=cached", cache)
    assert not reused["train"]["reused"] and not reused["val"]["reused"]
    assert reused["train"]["path"] == used["train"]["path"]
    assert f"reference cache {used['train']['path']} cannot be read" in caplog.text
    assert again["end"] == pytest.approx(first["end"], rel=1e-6, abs=1e-7)
    stored = torch.load(used["train"]["path"], weights_only=True)  # whole again
    assert reference_cache.checksum(stored["values"]) == stored["sha256"]


def test_a_cache_of_another_model_is_refused(compose, fast_overrides, tmp_path, caplog):
    """The local model directory is overwritten by another model of the same shape, its
    files' sizes and times kept (cp -p): the key cannot tell, the cache holds the first
    model's log-probs. At step 0 the policy is the reference, so the KL must be 0: the
    cache is refused and recomputed instead of training against a KL of several nats."""
    from prefopt.models import ModelConfig, build_policy

    model_dir = tmp_path / "model"

    def save_model(seed):
        torch.manual_seed(seed)
        cfg = ModelConfig()
        tokenizer = build_tokenizer()
        build_policy(cfg, tokenizer).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)

    save_model(0)
    times = {p.name: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in model_dir.iterdir()}
    hf = ["model=hf", f"model.name_or_path={model_dir}", "reference=cached",
          f"reference_cache_dir={tmp_path / 'cache'}"]
    _, used = run(compose, fast_overrides, tmp_path, "first", *hf)
    sizes = {p.name: p.stat().st_size for p in model_dir.iterdir()}
    save_model(1)
    for path in model_dir.iterdir():
        os.utime(path, ns=times[path.name])
    assert {p.name: p.stat().st_size for p in model_dir.iterdir()} == sizes

    with caplog.at_level(logging.WARNING, logger="prefopt.reference_cache"):
        second, again = run(compose, fast_overrides, tmp_path, "second", *hf)
    assert again["val"]["path"] == used["val"]["path"]  # the same key
    assert not again["val"]["reused"] and not again["train"]["reused"]
    assert "holds log-probs of another model" in caplog.text
    assert second["start"]["val/kl"] == pytest.approx(0.0, abs=1e-5)
    assert second["start"]["val/rewards/margins"] == pytest.approx(0.0, abs=1e-5)


def test_a_cache_is_used_only_whole_and_as_written(tmp_path):
    path = tmp_path / "reference" / "key.pt"
    groups = [EncodedGroup([1, 5], ([7, 2], [8, 2])), EncodedGroup([1, 6], ([9, 2], [7, 2]))]
    values = [[-3.5, -4.25], [-1.0, -2.0]]
    reference_cache.save(path, values)
    assert reference_cache.load(path, groups) == (values, "")
    assert [p.name for p in path.parent.iterdir()] == ["key.pt"]

    stored = torch.load(path, weights_only=True)
    stored["values"][0][0] = -30.5  # a flipped value, its checksum as written
    torch.save(stored, path)
    assert reference_cache.load(path, groups) == (None, "does not match its checksum")
    torch.save(values, path)  # format 1: bare values, no checksum
    assert reference_cache.load(path, groups)[1] == "is not a cache file of this prefopt version"
    reference_cache.save(path, values[:1])
    assert reference_cache.load(path, groups) == (None, "does not match the data")


def test_the_check_measures_the_kl_to_the_cached_values(tiny_model, tokenizer):
    """The policy against its own log-probs shifted by -2 nats per completion: the KL the
    run would log at step 0 is +2 (Σ log π − Σ log π_ref), the gap 2/len per token."""
    groups = [EncodedGroup([1, 5, 6], ([7, 2], [8, 8, 2])), EncodedGroup([1, 9], ([9, 2],))]
    exact = reference_cache.compute(tiny_model, groups, tokenizer.pad_token_id, impl="torch")
    kl, worst = reference_cache.disagreement(tiny_model, groups, exact, tokenizer.pad_token_id,
                                             impl="torch")
    assert kl == pytest.approx(0.0, abs=1e-6) and worst == pytest.approx(0.0, abs=1e-6)
    shifted = [[v - 2.0 for v in row] for row in exact]
    kl, worst = reference_cache.disagreement(tiny_model, groups, shifted,
                                             tokenizer.pad_token_id, impl="torch")
    assert kl == pytest.approx(2.0, abs=1e-5)
    assert worst == pytest.approx(2.0 / 2, abs=1e-5)  # the shortest completion: 2 tokens
