"""OnlineModule on its own: what it refuses, the value model it builds, and the seeded
minibatch schedule (whole online runs: tests/integration/test_online.py)."""

import pytest
import torch

from prefopt.online.module import OnlineModule
from prefopt.online.rollout import RolloutConfig
from prefopt.online.value import ValueHead
from prefopt.plugins.dpo import DPO
from prefopt.plugins.ppo import PPO
from prefopt.plugins.reinforce import Reinforce
from prefopt.training.optim import OptimizerConfig, SchedulerConfig


def _module(model, tokenizer, objective, seed=0, **rollout):
    return OnlineModule(model, None, objective, OptimizerConfig(), SchedulerConfig(), tokenizer,
                        reward=lambda prompts, completions: torch.zeros(len(completions)),
                        rollout=RolloutConfig(**rollout), logprob_impl="torch", seed=seed)


def test_only_online_objectives(tiny_model, tokenizer):
    with pytest.raises(TypeError, match="OnlineModule hosts OnlineObjective subclasses, got DPO"):
        _module(tiny_model, tokenizer, DPO(DPO.Config(name="dpo", reference_free=True)))


def test_log_probs_at_the_sampling_temperature_and_the_value_head(tiny_model, tokenizer):
    module = _module(tiny_model, tokenizer, PPO(PPO.Config(name="ppo", kl_coef=0.0)),
                     temperature=0.7)
    assert module.temperature == 0.7
    assert isinstance(module.value_model, ValueHead)
    trained = {id(p) for p in module.trainable_parameters()}
    assert {id(p) for p in module.value_model.parameters()} <= trained
    assert module.automatic_optimization is False


def test_minibatches_partition_the_rows_each_epoch_from_the_step_seed(tiny_model, tokenizer):
    objective = PPO(PPO.Config(name="ppo", kl_coef=0.0, epochs=3, minibatches=2))
    module = _module(tiny_model, tokenizer, objective, seed=4)
    epochs = module._minibatches(7)
    assert len(epochs) == 3
    for epoch, parts in enumerate(epochs):
        assert [len(p) for p in parts] == [4, 3]  # as equal as 7 rows allow
        order = torch.cat(parts)
        assert sorted(order.tolist()) == list(range(7))
        # Independently: the permutation of (seed * 1_000_003 + step) * 101 + epoch.
        expected = torch.randperm(7, generator=torch.Generator().manual_seed(
            (4 * 1_000_003 + 0) * 101 + epoch))
        assert order.tolist() == expected.tolist()
    assert [torch.cat(p).tolist() for p in _module(
        tiny_model, tokenizer, objective, seed=4)._minibatches(7)] == \
        [torch.cat(p).tolist() for p in epochs]  # a resumed run draws the same


def test_more_minibatches_than_rows_is_refused(tiny_model, tokenizer):
    objective = PPO(PPO.Config(name="ppo", kl_coef=0.0, minibatches=5))
    with pytest.raises(ValueError, match="5 minibatches of a rollout of 4 completions"):
        _module(tiny_model, tokenizer, objective)._minibatches(4)


def test_a_reinforce_module_needs_no_value_model(tiny_model, tokenizer):
    module = _module(tiny_model, tokenizer, Reinforce(Reinforce.Config(name="r", kl_coef=0.0)))
    assert module.value_model is None and module.reference is None


def test_a_per_token_loss_stops_training_with_the_contract_error(tiny_model, tokenizer):
    """The online step refuses a loss that is not a scalar as the offline one does, naming
    the objective, instead of an autograd traceback from the backward."""
    import pytorch_lightning as pl

    from prefopt.data.tokenize import Encoder, TokenizeConfig
    from prefopt.objective import LossOutput
    from prefopt.registry import PluginError

    class PerToken(Reinforce):
        def loss(self, inputs):
            return LossOutput(-(inputs.logps * inputs.advantages).sum(-1))  # [rows]

    module = _module(tiny_model, tokenizer, PerToken(Reinforce.Config(name="pt", kl_coef=0.0)),
                     num_samples=2, max_new_tokens=3)
    prompts = ["sort 21", "sort 9"]
    batch = {"prompts": prompts,
             "prompt_ids": Encoder(tokenizer, TokenizeConfig()).prompt_ids(prompts)}
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(PluginError, match=r"^objective 'pt' breaks the plugin contract "
                                          r"\(training, step 0\): LossOutput.loss must be a "
                                          r"scalar tensor, got shape \[4\]"):
        trainer.fit(module, train_dataloaders=loader)
