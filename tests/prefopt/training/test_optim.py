"""AdamW: fused on CUDA only, clipped under bf16 too, weight decay on matrices only."""

import pytest
import torch

from prefopt.training import optim
from prefopt.training.optim import OptimizerConfig, SchedulerConfig


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_adamw_is_fused_on_cuda_only(tiny_model, device, dpo_module):
    module = dpo_module(tiny_model.to(device))
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert bool(optimizer.defaults["fused"]) is (device == "cuda")


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_adamw_steps_on_clipped_gradients(tiny_model, precision, dpo_module, pair_batch):
    """With a fused AdamW (forced here on the CPU) the update sees gradients clipped to
    trainer.gradient_clip_val, under bf16 autocast as in full precision."""
    import pytorch_lightning as pl

    module = dpo_module(tiny_model)
    module.optimizer_cfg.fused = True
    norms = []

    def after_step(optimizer, args, kwargs):  # (Lightning runs the closure inside step())
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))

    loader = torch.utils.data.DataLoader([pair_batch] * 2, batch_size=None)
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


def test_weight_decay_on_matrices_only_and_warmup_from_the_ratio():
    linear, norm = torch.nn.Linear(3, 2), torch.nn.LayerNorm(2)
    params = [linear.weight, linear.bias, norm.weight, norm.bias]
    out = optim.configure(params, OptimizerConfig(lr=1.0, weight_decay=0.1),
                          SchedulerConfig(name="linear", warmup_ratio=0.25), total_steps=8,
                          precision_plugin=None)
    optimizer, scheduler = out["optimizer"], out["lr_scheduler"]["scheduler"]
    decayed, plain = optimizer.param_groups
    assert decayed["params"] == [linear.weight] and decayed["weight_decay"] == 0.1
    assert plain["params"] == [linear.bias, norm.weight, norm.bias]
    assert plain["weight_decay"] == 0.0
    assert optimizer.defaults["fused"] is None  # CPU parameters: the foreach loop
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # Warmup over round(0.25 * 8) = 2 steps, then linear decay to 0 at step 8:
    # lr(t) = t / 2 for t < 2, else (8 - t) / (8 - 2).
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6])
