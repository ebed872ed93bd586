"""A SteerLM policy trained on the built-in task obeys requested attributes >= 90% of the
time, against none before training.

Obedience is measured independently of the training loop: the exported policy is loaded
with `load_policy`, answers held-out prompts (never seen in training) with requested
values written into its attribute line, and a program measures each answer's quality,
order and length (`synthetic.measure_attributes`).
"""

import pytest

from prefopt.data.synthetic import SyntheticConfig, measure_attributes, splits, steering_requests
from prefopt.evaluate import obedience
from prefopt.generate import GenerationConfig, generate, load_policy

# Fewer steps than the README's command (the default 1800, 100% obedience): CI's budget.
STEPS = 700


@pytest.mark.slow
def test_steerlm_policy_obeys_requested_attributes(compose, tmp_path):
    from prefopt.models import ModelConfig, build_policy, build_tokenizer
    from prefopt.training.train import train

    cfg = compose("objective=steerlm", "data.attribute_dropout=0.1",
                  f"trainer.max_steps={STEPS}", "trainer.val_check_interval=350",
                  "trainer.enable_progress_bar=false")
    train(cfg)
    policy, tokenizer, schema = load_policy(str(tmp_path / "run" / "policy"))
    prompts = [r["prompt"] for r in splits(SyntheticConfig(**cfg.data.synthetic),
                                           "attributed")["val"]][:128]
    requests = steering_requests(prompts, seed=7)
    assert {"order", "length"} <= set().union(*requests)

    def rates(model):
        answers = generate(model, tokenizer, prompts, GenerationConfig(max_new_tokens=12),
                           schema=schema, attributes=requests)
        return obedience(requests, [measure_attributes(p, a) for p, a in zip(prompts, answers)])

    after = rates(policy)
    assert after["all"] >= 0.9, after
    # The same architecture and seed before training: the run's initial policy.
    import torch

    torch.manual_seed(cfg.seed)
    initial = build_policy(ModelConfig(), build_tokenizer(ModelConfig()))
    assert rates(initial)["all"] <= 0.2
