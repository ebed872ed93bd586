"""Rollouts: sampled completions cut at EOS, laid out as training rows; padding-invariant."""

import pytest
import torch

from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.logprobs import completion_logps
from prefopt.online.rollout import RolloutConfig, _cut_at_eos, check_config, sample


def test_cut_at_the_first_eos_which_stays():
    assert _cut_at_eos([5, 6, 2, 7, 2], eos_id=2) == ([5, 6, 2], True)
    assert _cut_at_eos([5, 6, 7], eos_id=2) == ([5, 6, 7], False)


@pytest.mark.parametrize("field,value", [("num_samples", 0), ("max_new_tokens", 0),
                                         ("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5)])
def test_bad_rollout_settings_are_named(field, value):
    with pytest.raises(ValueError, match=f"rollout.{field}"):
        check_config(RolloutConfig(**{field: value}))


def _prompts(tokenizer, texts):
    return Encoder(tokenizer, TokenizeConfig()).prompt_ids(texts)


def test_samples_are_grouped_by_prompt_and_end_at_eos(tiny_model, tokenizer):
    texts = ["sort 5213", "reverse 12"]
    ids = _prompts(tokenizer, texts)
    torch.manual_seed(0)
    rollout = sample(tiny_model, tokenizer, texts, ids, RolloutConfig(num_samples=3,
                                                                      max_new_tokens=6))
    batch = rollout.batch
    assert batch["group"].tolist() == [0, 0, 0, 1, 1, 1]
    assert rollout.prompts == [texts[0]] * 3 + [texts[1]] * 3
    eos = tokenizer.eos_token_id
    for row in range(6):
        prompt = ids[row // 3]
        tokens = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert tokens[:len(prompt)] == prompt
        completion = tokens[len(prompt):]
        assert completion == batch["input_ids"][row][batch["completion_mask"][row]].tolist()
        assert len(completion) == rollout.lengths[row] <= 6
        # Ended exactly when the completion's last token is its only EOS.
        assert bool(rollout.ended[row]) == (completion[-1] == eos)
        assert eos not in completion[:-1]
        if not rollout.ended[row]:
            assert len(completion) == 6
        assert rollout.completions[row] == tokenizer.decode(completion, skip_special_tokens=True)


def test_greedy_is_one_deterministic_answer_per_prompt(tiny_model, tokenizer):
    texts = ["sort 5213", "reverse 12", "sort 9"]
    ids = _prompts(tokenizer, texts)
    first = sample(tiny_model, tokenizer, texts, ids, RolloutConfig(), greedy=True)
    second = sample(tiny_model, tokenizer, texts, ids, RolloutConfig(), greedy=True)
    assert first.completions == second.completions and len(first.completions) == 3
    assert tiny_model.training  # the model's mode is restored after sampling


def test_padding_does_not_change_any_log_prob(tiny_model, tokenizer):
    """Each row's token log-probs in the whole (padded) rollout equal those of the row
    alone, without padding."""
    texts = ["sort 5213", "reverse 120934", "sort 9"]
    ids = _prompts(tokenizer, texts)
    torch.manual_seed(1)
    rollout = sample(tiny_model, tokenizer, texts, ids, RolloutConfig(num_samples=2,
                                                                      max_new_tokens=8))
    batch = rollout.batch
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # rows of different lengths: padding present
    with torch.no_grad():
        together = completion_logps(tiny_model, batch, token_level=True, impl="torch")
        for row in range(len(lengths)):
            n = int(lengths[row])
            alone = completion_logps(tiny_model, {k: batch[k][row:row + 1, :n] for k in
                                                  ("input_ids", "attention_mask",
                                                   "completion_mask")},
                                     token_level=True, impl="torch")
            torch.testing.assert_close(together.token_logps[row, :n - 1],
                                       alone.token_logps[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(together.token_logps[row, n - 1:],
                                       torch.zeros(together.token_logps.shape[1] - n + 1))


def test_the_models_own_generation_config_is_not_applied(tiny_model, tokenizer):
    """Samples come from the policy's distribution, whatever its checkpoint's generation
    settings: with top_k=1 applied, every sample of one prompt would be the same token."""
    tiny_model.generation_config.top_k = 1
    tiny_model.generation_config.repetition_penalty = 50.0
    tiny_model.generation_config.min_new_tokens = 4
    ids = _prompts(tokenizer, ["sort 5213"])
    torch.manual_seed(0)
    rollout = sample(tiny_model, tokenizer, ["sort 5213"], ids,
                     RolloutConfig(num_samples=64, max_new_tokens=1))
    first = rollout.batch["input_ids"][:, len(ids[0])]
    assert len(set(first.tolist())) > 20  # a random tiny model is near uniform over ~100
    assert (rollout.lengths == 1).all()  # no minimum length either
