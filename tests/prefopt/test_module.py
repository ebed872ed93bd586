"""PreferenceModule: metrics schema, non-finite detection, optimizer groups."""

import re

import pytest
import torch

from prefopt.data.collate import collate_groups
from prefopt.data.records import pairwise_record
from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.models import make_reference
from prefopt.training.metrics import NonFiniteError
from prefopt.training.module import PreferenceModule
from prefopt.training.optim import OptimizerConfig, SchedulerConfig
from prefopt.plugins.dpo import DPO


def batch(tokenizer):
    records = [pairwise_record("sort 21", "12", "21", "r0"), pairwise_record("sort 9", "9", "8",
                                                                           "r1")]
    pairs, _ = Encoder(tokenizer, TokenizeConfig()).encode_all(records)
    return collate_groups(pairs, tokenizer.pad_token_id)


def module_for(model, **dpo):
    objective = DPO(DPO.Config(name="dpo", **dpo))
    reference = make_reference(model) if objective.needs().reference else None
    return PreferenceModule(model, reference, objective, OptimizerConfig(), SchedulerConfig(),
                            logprob_impl="torch")


def test_non_finite_loss_names_step_and_metric(tiny_model, tokenizer):
    module = module_for(tiny_model)
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^train/loss became nan at step 0"):
        module._step(batch(tokenizer), "train")


def test_reference_free_loads_no_reference(tiny_model):
    module = module_for(tiny_model, reference_free=True)
    assert module.reference is None


def test_reference_required(tiny_model):
    with pytest.raises(ValueError, match="needs a reference model"):
        PreferenceModule(tiny_model, None, DPO(DPO.Config(name="dpo")), OptimizerConfig(),
                         SchedulerConfig())


@pytest.mark.parametrize("needs,message", [
    (dict(reward_model=True, reference=False), "reward model on unpaired records"),
    (dict(mismatched_pairs=True, reference=False), "mismatched_pairs .* without a reference"),
])
def test_build_refuses_needs_the_module_cannot_serve(needs, message):
    from prefopt.objective import BatchFormat, Needs, unfeedable
    from prefopt.plugins.kto import KTO

    class Odd(KTO):
        def needs(self):
            return Needs(**needs)

    objective = Odd(KTO.Config(name="odd"))
    assert objective.batch_format == BatchFormat.UNPAIRED
    assert re.search(message, unfeedable(objective))
    assert unfeedable(KTO(KTO.Config(name="kto"))) is None  # KTO itself is fine


def test_gradients_are_freed_right_after_each_optimizer_step(tiny_model, tokenizer):
    """No step's forward runs beside the previous step's gradients (Lightning alone would
    zero them only after the next forward), and the updates still use fresh gradients."""
    import pytorch_lightning as pl

    module = module_for(tiny_model)
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(sum(p.grad is not None for p in pl_module.trainable_parameters()))

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(sum(p.grad is not None for p in pl_module.trainable_parameters()))

    loader = torch.utils.data.DataLoader([batch(tokenizer)] * 3, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Probe()])
    before = [p.detach().clone() for p in module.trainable_parameters()]
    trainer.fit(module, train_dataloaders=loader)
    n = len(module.trainable_parameters())
    assert seen == [0, n] * 3  # none at each step's start, all of them at its update
    assert all(not torch.equal(a, p) for a, p in zip(before, module.trainable_parameters()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_adamw_is_fused_on_cuda_only(tiny_model, device):
    module = module_for(tiny_model.to(device))
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert bool(optimizer.defaults["fused"]) is (device == "cuda")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_adamw_steps_on_clipped_gradients(tiny_model, tokenizer, precision):
    """With a fused AdamW (forced here on the CPU) the update sees gradients clipped to
    trainer.gradient_clip_val, under bf16 autocast as in full precision."""
    import pytorch_lightning as pl

    module = module_for(tiny_model)
    module.optimizer_cfg.fused = True
    norms = []

    def after_step(optimizer, args, kwargs):  # (Lightning runs the closure inside step())
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    loader = torch.utils.data.DataLoader([batch(tokenizer)] * 2, batch_size=None)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, precision=precision,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, gradient_clip_val=1e-3)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = register_optimizer_step_post_hook(after_step)
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        handle.remove()
    assert trainer.optimizers[0].defaults["fused"] is True
    assert norms == pytest.approx([1e-3, 1e-3], rel=1e-3)  # the raw norms are far larger

