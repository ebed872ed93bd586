"""PreferenceModule: one step of an offline objective, non-finite detection, gradients freed."""

import pytest
import torch

from prefopt.training.metrics import NonFiniteError


def test_non_finite_loss_names_step_and_metric(tiny_model, dpo_module, pair_batch):
    module = dpo_module(tiny_model)
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^train/loss became nan at step 0; stopping\. "
                                             r"In training, before any optimizer step: "
                                             r"objective 'dpo'"):
        module._step(pair_batch, "train")


def test_gradients_are_freed_right_after_each_optimizer_step(tiny_model, dpo_module, pair_batch):
    """No step's forward runs beside the previous step's gradients (Lightning alone would
    zero them only after the next forward), and the updates still use fresh gradients."""
    import pytorch_lightning as pl

    module = dpo_module(tiny_model)
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(sum(p.grad is not None for p in pl_module.trainable_parameters()))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(sum(p.grad is not None for p in pl_module.trainable_parameters()))

    loader = torch.utils.data.DataLoader([pair_batch] * 3, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Probe()])
    before = [p.detach().clone() for p in module.trainable_parameters()]
    trainer.fit(module, train_dataloaders=loader)
    n = len(module.trainable_parameters())
    assert seen == [0, n] * 3  # none at each step's start, all of them at its update
    assert all(not torch.equal(a, p) for a, p in zip(before, module.trainable_parameters()))


def _dpo_returning(make_loss):
    """A DPO whose loss() returns make_loss(the per-pair losses, its LossOutput)."""
    from prefopt.objective import LossOutput
    from prefopt.plugins.dpo import DPO

    class Broken(DPO):
        def loss(self, inputs):
            out = super().loss(inputs)
            per_pair = out.metrics["rewards/margins"] * 0 + out.loss  # [B], with gradient
            return LossOutput(make_loss(per_pair, out), out.metrics)
    return Broken


@pytest.mark.parametrize("stage", ["train", "val"])
def test_a_per_example_loss_is_a_contract_error_naming_the_objective(tiny_model, dpo_module,
                                                                     pair_batch, stage):
    from prefopt.registry import PluginError

    module = dpo_module(tiny_model)
    module.objective.__class__ = _dpo_returning(lambda per_pair, out: per_pair)
    with pytest.raises(PluginError, match=r"^objective 'dpo' breaks the plugin contract "
                                          r"\((training|validation), step 0\): LossOutput.loss "
                                          r"must be a scalar tensor, got shape \[2\]"):
        module._step(pair_batch, stage)


def test_a_loss_without_gradient_is_a_contract_error_in_training(tiny_model, dpo_module,
                                                                 pair_batch):
    from prefopt.registry import PluginError

    module = dpo_module(tiny_model)
    module.objective.__class__ = _dpo_returning(lambda per_pair, out: out.loss.detach())
    with pytest.raises(PluginError, match=r"objective 'dpo' breaks the plugin contract "
                                          r"\(training, step 0\): the loss carries no gradient: "
                                          r"it does not depend on the policy's log-probs"):
        module._step(pair_batch, "train")
    with torch.no_grad():  # validation computes no gradient: nothing to ask of it
        module._step(pair_batch, "val")


def test_a_per_example_loss_stops_fit_with_the_contract_error(tiny_model, dpo_module,
                                                              pair_batch):
    """What a user sees from prefopt-train: the contract error, not autograd's "grad can be
    implicitly created only for scalar outputs" from inside Lightning's closure."""
    import pytorch_lightning as pl

    from prefopt.registry import PluginError

    module = dpo_module(tiny_model)
    module.objective.__class__ = _dpo_returning(lambda per_pair, out: per_pair)
    loader = torch.utils.data.DataLoader([pair_batch], batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(PluginError, match=r"objective 'dpo' .* must be a scalar tensor"):
        trainer.fit(module, train_dataloaders=loader)


def test_per_token_log_probs_reach_the_objective_when_asked(tiny_model, dpo_module, pair_batch):
    """needs().token_logps: PairwiseLogps carries per-token log-probs and masks of policy
    and reference, equal to log_softmax of the model's own logits at the completion tokens."""
    import dataclasses

    from prefopt.objective import Needs

    module = dpo_module(tiny_model)
    plain, _ = module.loss_inputs(pair_batch)
    assert plain.chosen_token_logps is None and plain.ref_rejected_token_logps is None

    needs = dataclasses.replace(module.needs, token_logps=True)
    module.needs = needs
    assert module.needs == Needs(reference=True, token_logps=True)
    inputs, _ = module.loss_inputs(pair_batch)

    # Independently: the next-token log-softmax of the full logits, rows (c0, r0, c1, r1).
    ids, attention = pair_batch["input_ids"], pair_batch["attention_mask"]
    mask = pair_batch["completion_mask"][:, 1:]
    with torch.no_grad():
        expected = {}
        for name, model in (("policy", tiny_model), ("reference", module.reference)):
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
            expected[name] = torch.log_softmax(logits[:, :-1], -1).gather(
                -1, ids[:, 1:, None])[..., 0] * mask
    chosen, rejected = pair_batch["slot"] == 0, pair_batch["slot"] == 1
    for side, rows in (("chosen", chosen), ("rejected", rejected)):
        token_mask = getattr(inputs, f"{side}_token_mask")
        policy = getattr(inputs, f"{side}_token_logps")
        reference = getattr(inputs, f"ref_{side}_token_logps")
        assert token_mask.dtype == torch.bool and torch.equal(token_mask, mask[rows])
        assert torch.equal(token_mask.sum(-1), getattr(inputs, f"{side}_tokens"))
        torch.testing.assert_close(policy.detach(), expected["policy"][rows], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(reference, expected["reference"][rows], atol=1e-5, rtol=1e-5)
        assert policy.requires_grad and not reference.requires_grad
        torch.testing.assert_close(policy.sum(-1), getattr(inputs, side))
        torch.testing.assert_close(reference.sum(-1), getattr(inputs, f"ref_{side}"))


def test_cached_reference_cannot_serve_per_token_log_probs(tiny_model):
    from prefopt.objective import Needs
    from prefopt.plugins.dpo import DPO
    from prefopt.training.module import PreferenceModule
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    class TokenDPO(DPO):
        def needs(self):
            return Needs(reference=True, token_logps=True)

    with pytest.raises(ValueError, match=r"reference=cached stores summed reference log-probs "
                                         r"only, but objective 'dpo' needs per-token ones"):
        PreferenceModule(tiny_model, None, TokenDPO(TokenDPO.Config(name="dpo")),
                         OptimizerConfig(), SchedulerConfig(), reference_cached=True)
