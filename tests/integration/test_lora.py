"""LoRA: adapters train, the reference is the base with adapters off (one copy of the base
weights), and the export merges the adapters into a plain transformers model."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from prefopt.models import LoraConfig, ModelConfig, build_policy, uses_lora


def test_lora_run_holds_one_copy_and_exports_merged(compose, fast_overrides, tmp_path,
                                                    tokenizer):
    from prefopt.training.train import build, train

    cfg = compose("model.lora.r=4", *fast_overrides)
    module, _, _ = build(cfg)
    assert uses_lora(module.policy) and module.reference is None and module.reference_is_base
    base = build_policy(ModelConfig(), tokenizer)
    n_base = sum(p.numel() for p in base.parameters())
    n_module = sum(p.numel() for p in module.parameters())
    n_trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    # Everything the module holds: the base weights once, plus the adapters (all trainable).
    assert n_module == n_base + n_trainable and 0 < n_trainable < n_base // 5

    result = train(cfg)
    assert result["start"]["val/loss"] == pytest.approx(0.6931472, abs=1e-6)  # π = π_ref
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy")
    assert not uses_lora(exported)
    assert sum(p.numel() for p in exported.parameters()) == n_base


@pytest.mark.slow
def test_lora_run_exports_the_adapter_alone_too(compose, fast_overrides, tmp_path, tokenizer):
    """policy-adapter/ on the run's base model computes what the merged policy/ does; each
    export has a model card naming the objective and the final metrics."""
    import peft
    import pytorch_lightning as pl

    from prefopt.training.train import train

    result = train(compose("model.lora.r=4", "optimizer.lr=0.05", *fast_overrides))
    run = tmp_path / "run"
    pl.seed_everything(0)  # the run's seed: the base model's weights are drawn first
    base = build_policy(ModelConfig(), tokenizer)
    adapted = peft.PeftModel.from_pretrained(base, run / "policy-adapter")
    merged = AutoModelForCausalLM.from_pretrained(run / "policy")
    assert sorted(p.name for p in (run / "policy-adapter").iterdir()
                  if p.suffix in (".json", ".safetensors")) == [
        "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    ids = torch.tensor([[1, 5, 40, 41, 42, 2]])
    with torch.no_grad():
        logits = adapted(ids).logits
        with adapted.disable_adapter():  # the adapter did train: it changes the logits
            assert not torch.allclose(adapted(ids).logits, logits, atol=1e-4)
        torch.testing.assert_close(merged(ids).logits, logits, rtol=1e-4, atol=1e-5)

    accuracy = result["end"]["val/rewards/accuracies"]
    for folder in ("policy", "policy-adapter"):
        card = (run / folder / "README.md").read_text()
        assert "objective: `dpo`" in card and "beta: 0.1" in card
        assert f"| `val/rewards/accuracies` | {accuracy:.4f} |" in card
        assert "optimizer steps: 2" in card
    assert "PeftModel.from_pretrained" in (run / "policy-adapter" / "README.md").read_text()


def test_merged_export_computes_what_the_adapted_policy_did(tokenizer, tmp_path):
    from prefopt.models import exportable

    torch.manual_seed(0)
    policy = build_policy(ModelConfig(lora=LoraConfig(r=4)), tokenizer)
    with torch.no_grad():  # adapters start as a no-op (B = 0); make them do something
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.tensor([[1, 5, 40, 41, 42, 2]])
    with torch.no_grad():
        adapted = policy(ids).logits
        with policy.disable_adapter():
            assert not torch.allclose(policy(ids).logits, adapted)
    exportable(policy).save_pretrained(tmp_path)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path)(ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-5)


def test_lora_reference_logps_are_the_base_model(tokenizer):
    from prefopt.plugins.dpo import DPO
    from prefopt.training.module import PreferenceModule
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    torch.manual_seed(0)
    policy = build_policy(ModelConfig(lora=LoraConfig(r=4)), tokenizer)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    module = PreferenceModule(policy, None, DPO(DPO.Config(name="dpo")), OptimizerConfig(),
                              SchedulerConfig(), logprob_impl="torch")
    from prefopt.data.collate import collate_groups
    from prefopt.data.records import pairwise_record
    from prefopt.data.tokenize import Encoder, TokenizeConfig
    from prefopt.logprobs import completion_logps

    groups, _ = Encoder(tokenizer, TokenizeConfig()).encode_all(
        [pairwise_record("sort 21", "12", "21", "r0")])
    batch = collate_groups(groups, tokenizer.pad_token_id)
    inputs, data = module.loss_inputs(batch)
    rows = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    with torch.no_grad(), policy.disable_adapter():
        base = completion_logps(policy, rows, impl="torch").logps
    torch.testing.assert_close(data.reference.logps, base)
    assert not torch.allclose(data.policy.logps.detach(), base)
