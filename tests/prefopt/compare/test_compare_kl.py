"""The KL estimate: exactly 0 for a policy equal to its reference; the log-ratio of each
sample as full-vocabulary log-softmax computes it; and, over many one-token samples, the
analytic KL of a policy whose logits are the reference's times c."""

import copy
import math

import pytest
import torch

from prefopt.compare.evaluation import EvalConfig, evaluate_policy, sequence_kl
from prefopt.data.datamodule import DataConfig
from prefopt.data.synthetic import SyntheticConfig
from prefopt.data.tokenize import Encoder
from prefopt.online.rollout import RolloutConfig, sample

PROMPTS = ["sort 5213", "reverse 907", "sort 44310"]


def _scaled(model, c: float):
    """A copy of `model` whose LM head is c·W: its logits are exactly c times the model's."""
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.get_output_embeddings().weight.mul_(c)
    return scaled


def _rollout(model, tokenizer, samples=2, max_new_tokens=6):
    ids = Encoder(tokenizer, DataConfig()).prompt_ids(PROMPTS)
    torch.manual_seed(0)
    rollout = sample(model, tokenizer, PROMPTS, ids,
                     RolloutConfig(num_samples=samples, max_new_tokens=max_new_tokens))
    return {k: v for k, v in rollout.batch.items() if k != "group"}


def test_policy_equal_to_reference_gives_zero_exactly(tiny_model, tokenizer):
    batch = _rollout(tiny_model, tokenizer)
    kl = sequence_kl(tiny_model, copy.deepcopy(tiny_model), batch, impl="torch")
    assert kl.shape == (len(PROMPTS) * 2,)
    assert torch.equal(kl, torch.zeros_like(kl))


def _log_ratio_by_full_softmax(policy, reference, batch):
    """Σ over completion tokens of log_softmax(policy logits) − log_softmax(reference
    logits) at the sampled token: the transformers forward, all of the vocabulary."""
    with torch.no_grad():
        ours = torch.log_softmax(policy(input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"]).logits, -1)
        theirs = torch.log_softmax(reference(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"]).logits, -1)
    target = batch["input_ids"][:, 1:].unsqueeze(-1)
    per_token = (ours[:, :-1].gather(-1, target) - theirs[:, :-1].gather(-1, target))[..., 0]
    return (per_token * batch["completion_mask"][:, 1:]).sum(1).double()


def test_each_sample_is_its_summed_token_log_ratio(tiny_model, tokenizer):
    policy = _scaled(tiny_model, 3.0)
    batch = _rollout(policy, tokenizer)
    expected = _log_ratio_by_full_softmax(policy, tiny_model, batch)
    assert expected.abs().max() > 0.01  # the head change does move the log-probs
    torch.testing.assert_close(sequence_kl(policy, tiny_model, batch, impl="torch"), expected,
                               rtol=1e-4, atol=1e-4)


def test_one_token_samples_estimate_the_analytic_kl(tiny_model, tokenizer):
    """max_new_tokens=1: each sample is one token x ~ p = softmax(c z), z the reference's
    logits after the prompt, so the estimate's mean is KL_i = Σ_x p log(p / q), q =
    softmax(z), and its variance Σ_i Var_i / (P² k), Var_i = Σ p log²(p/q) − KL_i²."""
    c, k = 8.0, 200
    policy = _scaled(tiny_model, c)
    data = DataConfig(synthetic=SyntheticConfig(n_train=8, n_val=4))
    cfg = EvalConfig(prompts=4, samples=k, max_new_tokens=1, seed=0)
    result = evaluate_policy(policy, tiny_model, tokenizer, data, cfg, "test", impl="torch")

    from prefopt.compare.evaluation import heldout_prompts

    kls, variances = [], []
    for ids in Encoder(tokenizer, data).prompt_ids(heldout_prompts(data, 4, "test")):
        with torch.no_grad():
            z = tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        log_p, log_q = torch.log_softmax(c * z, -1), torch.log_softmax(z, -1)
        ratio, p = log_p - log_q, log_p.exp()
        kls.append(float((p * ratio).sum()))
        variances.append(float((p * ratio ** 2).sum()) - kls[-1] ** 2)
    expected = sum(kls) / len(kls)
    sigma = math.sqrt(sum(variances) / (len(kls) ** 2 * k))
    assert result.samples == 4 * k and result.prompts == 4
    assert expected > 0.05  # a real distance, not a comparison of zeros
    assert result.kl == pytest.approx(expected, abs=4 * sigma)
    assert 0.0 <= result.exact <= result.true_reward <= 1.0
