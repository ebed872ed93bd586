"""PreferenceModule: one step of an offline objective, non-finite detection, gradients freed."""

import pytest
import torch

from prefopt.training.metrics import NonFiniteError


def test_non_finite_loss_names_step_and_metric(tiny_model, dpo_module, pair_batch):
    module = dpo_module(tiny_model)
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^train/loss became nan at step 0"):
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
