"""The fused training path against the plain logits path, on the tiny model."""

import pytest
import torch

from prefopt.data.collate import collate_groups
from prefopt.data.records import pairwise_record
from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.logprobs import completion_logps, lm_head_weight
from prefopt.models import ModelConfig, TinyModelConfig, build_policy, make_reference
from prefopt.plugins.dpo import dpo_loss


def batch_of(tokenizer, pairs):
    records = [pairwise_record(p, c, r, where=f"test {i}") for i, (p, c, r) in enumerate(pairs)]
    encoded, _ = Encoder(tokenizer, TokenizeConfig()).encode_all(records)
    return collate_groups(encoded, pad_id=tokenizer.pad_token_id)


PAIRS = [("sort 5213", "1235", "1253"), ("reverse 90817", "71809", "7180"),
         ("sort 11", "11", "1")]


def logits_path(model, batch):
    """The textbook computation: full logits, log_softmax, gather the next tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    token = logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token * batch["completion_mask"][:, 1:]).sum(-1)


ON_GPU = pytest.param("cuda", "triton", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])


@pytest.mark.parametrize("device, impl", [("cpu", "torch"), ON_GPU])
@pytest.mark.parametrize("tied", [False, True])
def test_dpo_step_matches_logits_path(tokenizer, tied, device, impl):
    """One DPO step's loss and gradients through the fused path (the chunked torch
    reference on the CPU, the Triton kernels on a GPU) equal those of full logits."""
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(tiny=TinyModelConfig(tie_word_embeddings=tied)),
                          tokenizer).to(device)
    if tied:
        assert lm_head_weight(policy) is policy.get_input_embeddings().weight
    # Move the policy off its reference so that the loss is not log 2 with a trivial gradient.
    reference = make_reference(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    batch = {k: v.to(device) for k, v in batch_of(tokenizer, PAIRS).items()}

    def dpo(logps_policy, logps_ref):
        # Rows are group-major: chosen_0, rejected_0, chosen_1, ...
        return dpo_loss(logps_policy[0::2], logps_policy[1::2], logps_ref[0::2],
                        logps_ref[1::2], beta=0.1)[0].mean()

    with torch.no_grad():
        ref_plain = logits_path(reference, batch)
        ref_fused = completion_logps(reference, batch, impl=impl).logps
    torch.testing.assert_close(ref_fused.double(), ref_plain, rtol=1e-5, atol=1e-5)

    fused = completion_logps(policy, batch, impl=impl)
    loss_fused = dpo(fused.logps, ref_fused)
    grads_fused = torch.autograd.grad(loss_fused, list(policy.parameters()))
    plain = logits_path(policy, batch)
    loss_plain = dpo(plain, ref_plain)
    grads_plain = torch.autograd.grad(loss_plain, list(policy.parameters()))

    torch.testing.assert_close(fused.logps.double(), plain, rtol=1e-5, atol=1e-5)
    assert loss_fused.item() == pytest.approx(loss_plain.item(), rel=1e-5)
    for g_fused, g_plain in zip(grads_fused, grads_plain):
        torch.testing.assert_close(g_fused.double(), g_plain.double(), rtol=1e-4, atol=1e-6)
    assert fused.tokens.tolist() == [5, 5, 6, 5, 3, 2]  # answer + <|end|>


def test_entropy_matches_full_distribution(tiny_model, tokenizer):
    batch = batch_of(tokenizer, PAIRS[:1])
    with torch.no_grad():
        out = completion_logps(tiny_model, batch, impl="torch")
        logits = tiny_model(input_ids=batch["input_ids"]).logits[:, :-1].double()
    p = torch.softmax(logits, -1)
    entropy = -(p * torch.log(p)).sum(-1)
    expected = (entropy * batch["completion_mask"][:, 1:]).sum(-1)
    torch.testing.assert_close(out.entropy.double(), expected, rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_logps(tiny_model, tokenizer):
    with torch.no_grad():
        alone = completion_logps(tiny_model, batch_of(tokenizer, PAIRS[2:]), impl="torch")
        padded = completion_logps(tiny_model, batch_of(tokenizer, PAIRS), impl="torch")
    # Rows are [chosen_0, rejected_0, chosen_1, ...]; pair 2 (rows 4, 5) is the shortest.
    torch.testing.assert_close(padded.logps[[4, 5]], alone.logps, rtol=1e-5, atol=1e-5)


def test_token_level_logps_sum_to_sequence(tiny_model, tokenizer):
    with torch.no_grad():
        out = completion_logps(tiny_model, batch_of(tokenizer, PAIRS), impl="torch",
                               token_level=True)
    torch.testing.assert_close(out.token_logps.sum(-1), out.logps)


def test_head_with_bias_is_refused(tiny_model):
    head = tiny_model.get_output_embeddings()
    head.bias = torch.nn.Parameter(torch.zeros(head.weight.shape[0]))
    with pytest.raises(ValueError, match="bias"):
        lm_head_weight(tiny_model)
