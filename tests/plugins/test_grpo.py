"""GRPO and its variants against hand values, a loop-by-loop reference, and TRL's loss."""

import math
import types
from collections import defaultdict

import pytest
import torch

from prefopt.objective import Experience, OnlineLogps
from prefopt.plugins.grpo import GRPO

# 2 prompts x 2 samples; position 0 is the prompt's last token (off the mask).
MASK = torch.tensor([[0, 1, 1], [0, 1, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.bool)
LENGTHS = [2, 1, 2, 2]
OLD = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0], [0.0, -1.0, -1.0],
                    [0.0, -0.2, -0.3]])
# log π − log π_old per token, chosen so that some ratios leave [0.8, 1.28]
SHIFT = torch.tensor([[0.0, math.log(1.5), math.log(0.9)], [0.0, math.log(0.5), 0.0],
                      [0.0, math.log(1.1), math.log(0.7)], [0.0, math.log(1.2), math.log(1.4)]])
# log π − log π_ref per token
REF_SHIFT = torch.tensor([[0.0, 0.2, 0.3], [0.0, 0.1, 0.0], [0.0, 0.0, -0.1],
                          [0.0, 0.4, 0.6]])
SCORES = torch.tensor([1.0, 0.0, 0.25, 0.75])
GROUP = torch.tensor([0, 0, 1, 1])
MAX_LEN = 5


def _objective(**overrides):
    overrides = {"beta": 0.0, "max_completion_length": MAX_LEN, **overrides}
    return GRPO(GRPO.Config(name="grpo", **overrides))


def _experience(scores=SCORES, group=GROUP, mask=MASK):
    return Experience(mask=mask, logps=OLD * mask, scores=scores, group=group,
                      ref_logps=(OLD - REF_SHIFT) * mask)


# -- advantages --------------------------------------------------------------------

def test_group_advantages_with_and_without_std_scaling():
    # group 0: rewards 1, 0: mean 0.5, sample std √0.5; group 1: 0.25, 0.75: std √0.125
    scaled = _objective().advantages(_experience())
    a0, a1 = 0.5 / (math.sqrt(0.5) + 1e-4), 0.25 / (math.sqrt(0.125) + 1e-4)
    torch.testing.assert_close(scaled.advantages,
                               torch.tensor([a0, -a0, -a1, a1])[:, None] * MASK)
    centred = _objective(scale_rewards="none").advantages(_experience())
    torch.testing.assert_close(centred.advantages,
                               torch.tensor([0.5, -0.5, -0.25, 0.25])[:, None] * MASK)
    # batch: the group-centred rewards over the std of all four rewards
    batch_std = torch.tensor([1.0, 0.0, 0.25, 0.75]).std().item()
    batch = _objective(scale_rewards="batch").advantages(_experience())
    torch.testing.assert_close(batch.advantages, torch.tensor(
        [0.5, -0.5, -0.25, 0.25])[:, None] / (batch_std + 1e-4) * MASK)


def test_equal_rewards_give_zero_advantage():
    out = _objective().advantages(_experience(scores=torch.tensor([0.3, 0.3, 1.0, 0.0])))
    assert torch.equal(out.advantages[:2], torch.zeros(2, 3))


def _r_len(length, l_max, cache):
    """DAPO's R_length, written out."""
    if length <= l_max - cache:
        return 0.0
    if length <= l_max:
        return ((l_max - cache) - length) / cache
    return -1.0


@pytest.mark.parametrize("l_max,cache", [(2, 1), (3, 2), (1, 1)])
def test_overlong_shaping_is_added_to_the_reward(l_max, cache):
    out = _objective(overlong_max=l_max, overlong_cache=cache,
                     scale_rewards="none").advantages(_experience())
    shaped = torch.tensor([s + _r_len(n, l_max, cache) for s, n in zip(SCORES.tolist(), LENGTHS)])
    torch.testing.assert_close(out.rewards, shaped)
    centred = torch.stack([shaped[i] - shaped[GROUP == GROUP[i]].mean() for i in range(4)])
    torch.testing.assert_close(out.advantages, centred[:, None] * MASK)


def test_overlong_ramp_by_hand():
    from prefopt.plugins.grpo import overlong_penalty

    # L_max 10, L_cache 4: 0 up to 6, then −1/4 per token, −1 at 10 and beyond
    got = overlong_penalty(torch.tensor([3, 6, 7, 8, 10, 11]), 10, 4)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))


# -- the loss, against a loop-by-loop reference ----------------------------------------

def reference_loss(logps, old, ref, adv, mask, *, loss_type, eps_low, eps_high, beta,
                   sequence, max_len, tokens_per_minibatch=None):
    """The variants' loss in plain Python, one token at a time (the papers' formulas)."""
    rows = []
    for i in range(len(mask)):
        tokens = [t for t in range(mask.shape[1]) if mask[i, t]]
        if sequence:  # GSPO: s_i = exp(mean_t log π/π_old)
            s = math.exp(sum(float(logps[i, t] - old[i, t]) for t in tokens) / len(tokens))
        losses = []
        for t in tokens:
            ratio = s if sequence else math.exp(float(logps[i, t] - old[i, t]))
            a = float(adv[i, t])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            ell = -min(ratio * a, clipped * a)
            if beta:
                d = float(ref[i, t] - logps[i, t])  # log π_ref/π
                ell += beta * (math.exp(d) - d - 1)
            losses.append(ell)
        rows.append(losses)
    if loss_type == "grpo":
        return sum(sum(r) / len(r) for r in rows) / len(rows)
    total = sum(sum(r) for r in rows)
    if loss_type == "bnpo":
        return total / sum(len(r) for r in rows)
    if loss_type == "dapo":
        return total / tokens_per_minibatch
    return total / (len(rows) * max_len)  # dr_grpo


def _inputs(logps, advantages, ref=True):
    return OnlineLogps(logps=logps, entropy=torch.zeros(4), mask=MASK, old_logps=OLD * MASK,
                       advantages=advantages, ref_logps=(OLD - REF_SHIFT) * MASK if ref else None)


ADV = torch.tensor([1.0, -1.0, -0.5, 0.5])[:, None] * MASK
VARIANTS = [dict(loss_type=lt, sequence=seq, beta=beta, eps=eps)
            for lt in ("grpo", "bnpo", "dapo", "dr_grpo")
            for seq in (False, True) for beta in (0.0, 0.04)
            for eps in ((0.2, 0.2), (0.2, 0.28))]


def _config(v):
    return dict(loss_type=v["loss_type"], beta=v["beta"], epsilon_low=v["eps"][0],
                epsilon_high=v["eps"][1],
                importance_sampling_level="sequence" if v["sequence"] else "token")


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_loss_matches_the_loop_reference(v):
    objective = _objective(**_config(v))
    objective.advantages(_experience())  # sets dapo's normaliser: 7 tokens, 1 minibatch
    logps = (OLD + SHIFT) * MASK
    out = objective.loss(_inputs(logps, ADV))
    expected = reference_loss(logps, OLD, OLD - REF_SHIFT, ADV, MASK, loss_type=v["loss_type"],
                              eps_low=v["eps"][0], eps_high=v["eps"][1], beta=v["beta"],
                              sequence=v["sequence"], max_len=MAX_LEN, tokens_per_minibatch=7)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("loss_type,weight", [
    ("grpo", lambda i: 1 / (LENGTHS[i] * 4)),  # per completion, then over 4 completions
    ("bnpo", lambda i: 1 / 7),  # 7 tokens
    ("dapo", lambda i: 1 / 3.5),  # 7 tokens over 2 minibatches
    ("dr_grpo", lambda i: 1 / (4 * MAX_LEN)),
])
def test_on_policy_gradient_is_minus_the_advantage_times_the_aggregation_weight(
        loss_type, weight):
    objective = _objective(loss_type=loss_type, minibatches=2)
    objective.advantages(_experience())
    logps = (OLD * MASK).clone().requires_grad_(True)  # ratio 1: no clipping
    objective.loss(_inputs(logps, ADV)).loss.backward()
    expected = torch.stack([-ADV[i] * weight(i) for i in range(4)]) * MASK
    torch.testing.assert_close(logps.grad, expected)


def test_asymmetric_clip_and_its_fractions_by_hand():
    out = _objective(loss_type="bnpo", epsilon_low=0.2, epsilon_high=0.28).loss(
        _inputs((OLD + SHIFT) * MASK, ADV))
    # ratios: row 0 (A = 1) 1.5, 0.9; row 1 (A = −1) 0.5; row 2 (A = −0.5) 1.1, 0.7;
    # row 3 (A = 0.5) 1.2, 1.4. Clipped high: 1.5 and 1.4 (A > 0, > 1.28): 2 of 7 tokens.
    # Clipped low: 0.5 and 0.7 (A < 0, < 0.8): 2 of 7.
    assert out.metrics["grpo/clip_fraction_high"].item() == pytest.approx(2 / 7)
    assert out.metrics["grpo/clip_fraction_low"].item() == pytest.approx(2 / 7)
    # the loss: −min(ρA, clip(ρ)A) per token, token mean
    terms = [-1.28, -0.9, 0.8, 0.5 * 1.1, 0.5 * 0.8, -0.5 * 1.2, -0.5 * 1.28]
    assert out.loss.item() == pytest.approx(sum(terms) / 7, abs=1e-6)
    # symmetric ε = 0.2 clips 1.2 < 1.4 too: the high fraction counts 1.5 and 1.4 still
    sym = _objective(loss_type="bnpo").loss(_inputs((OLD + SHIFT) * MASK, ADV))
    assert sym.metrics["grpo/clip_fraction_high"].item() == pytest.approx(2 / 7)


def test_gspo_ratio_is_the_geometric_mean_of_the_token_ratios():
    out = _objective(importance_sampling_level="sequence", epsilon_low=0.5,
                     epsilon_high=0.5).loss(_inputs((OLD + SHIFT) * MASK, ADV))
    s = torch.tensor([math.sqrt(1.5 * 0.9), 0.5, math.sqrt(1.1 * 0.7), math.sqrt(1.2 * 1.4)])
    torch.testing.assert_close(out.metrics["grpo/ratio"], s)
    # ε = 0.5: only row 1's 0.5 sits at the boundary (not below it): nothing is clipped
    assert out.metrics["grpo/clip_fraction_low"].sum().item() == 0.0
    # grpo aggregation: per completion −s_i A_i, then the mean over completions
    expected = (-s[0] * 1 + s[1] * 1 + s[2] * 0.5 - s[3] * 0.5) / 4
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_k3_kl_term_by_hand():
    objective = _objective(loss_type="bnpo", beta=0.1)
    logps = (OLD * MASK).clone().requires_grad_(True)
    out = objective.loss(_inputs(logps, torch.zeros_like(ADV)))  # no policy term
    d = -REF_SHIFT[MASK]  # log π_ref/π on the 7 tokens
    k3 = torch.exp(d) - d - 1
    assert out.loss.item() == pytest.approx(0.1 * k3.mean().item(), abs=1e-7)
    assert out.metrics["grpo/kl"].item() == pytest.approx(k3.mean().item(), abs=1e-7)
    out.loss.backward()
    # ∂k3/∂log π = 1 − π_ref/π
    torch.testing.assert_close(logps.grad[MASK], 0.1 * (1 - torch.exp(d)) / 7)


def test_beta_zero_needs_no_reference_and_schedule_is_mu_by_minibatches():
    assert not _objective(beta=0.0).needs().reference
    assert _objective(beta=0.04).needs().reference
    assert _objective(num_iterations=3, minibatches=2).schedule() == (3, 2)


@pytest.mark.parametrize("bad,key", [
    (dict(epsilon_low=-0.1), "epsilon_low"), (dict(epsilon_low=1.0), "epsilon_low"),
    (dict(beta=-1.0), "beta"), (dict(num_iterations=0), "num_iterations"),
    (dict(overlong_max=4, overlong_cache=5), "overlong_cache"),
    (dict(max_completion_length=0), "max_completion_length"),
])
def test_bad_settings_name_the_key(bad, key):
    with pytest.raises(ValueError, match=f"objective.{key}"):
        _objective(**bad)


def test_dr_grpo_without_a_max_completion_length_names_the_key():
    with pytest.raises(ValueError, match="objective.max_completion_length"):
        _objective(loss_type="dr_grpo", max_completion_length=None)


def test_conformance_kit_checks_that_apply_to_online_objectives(registered):
    # check_objective's tensor checks refuse online objectives by design (prompts: not
    # covered by the kit); its declaration, entry-point and config checks apply.
    from prefopt.testing import check_declaration, check_entry_point
    from prefopt.testing.config import check_config

    check_declaration(GRPO)
    check_entry_point(GRPO, "grpo")
    check_config(GRPO, "grpo")


# -- parity with TRL 1.16 --------------------------------------------------------------

class _Accelerator:
    num_processes = 1

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_trainer(loss_type, beta, eps_low, eps_high, sequence, logps):
    """A GRPOTrainer without __init__, with the attributes `_compute_loss` reads, whose
    policy forward returns `logps`."""
    trl = pytest.importorskip("trl")
    trainer = object.__new__(trl.GRPOTrainer)
    trainer.__dict__.update(
        loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high,
        importance_sampling_level="sequence" if sequence else "token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        aux_loss_enabled=False, _entropy_bonus_enabled=False, max_completion_length=MAX_LEN,
        current_gradient_accumulation_steps=1, accelerator=_Accelerator(),
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None,
                                   steps_per_generation=1),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)})
    trainer._get_per_token_logps_and_entropies = \
        lambda *a, **k: (logps, torch.zeros_like(logps), None)
    return trainer


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_loss_and_gradient_match_trl(v):
    pytest.importorskip("trl")
    # TRL's tensors cover the completion only: drop the prompt column.
    mask, old, ref, adv = MASK[:, 1:], OLD[:, 1:], (OLD - REF_SHIFT)[:, 1:], ADV[:, 1:]
    ours = (OLD + SHIFT)[:, 1:].clone().requires_grad_(True)
    theirs = ours.detach().clone().requires_grad_(True)
    trainer = _trl_trainer(v["loss_type"], v["beta"], *v["eps"], v["sequence"], theirs)
    trl_loss = trainer._compute_loss(None, {
        "prompt_ids": torch.zeros(4, 1, dtype=torch.long),
        "prompt_mask": torch.ones(4, 1, dtype=torch.long),
        "completion_ids": torch.zeros(4, 2, dtype=torch.long),
        "completion_mask": mask.long(), "advantages": adv[:, 0],
        "old_per_token_logps": old * mask, "ref_per_token_logps": ref * mask,
        "num_items_in_batch": mask.sum()})
    objective = _objective(**_config(v))
    objective.advantages(Experience(mask=mask, logps=old * mask, scores=SCORES, group=GROUP))
    out = objective.loss(OnlineLogps(logps=ours * mask, entropy=torch.zeros(4), mask=mask,
                                     old_logps=old * mask, advantages=adv,
                                     ref_logps=ref * mask))
    assert out.loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    out.loss.backward()
    trl_loss.backward()
    torch.testing.assert_close(ours.grad * mask, theirs.grad * mask, atol=1e-6, rtol=0)
    if not v["sequence"]:
        metrics = trainer._metrics["train"]
        assert out.metrics["grpo/clip_fraction_low"].item() == pytest.approx(
            metrics["clip_ratio/low_mean"][0], abs=1e-6)
        assert out.metrics["grpo/clip_fraction_high"].item() == pytest.approx(
            metrics["clip_ratio/high_mean"][0], abs=1e-6)


# -- the presets -------------------------------------------------------------------------

@pytest.mark.parametrize("preset,expected", [
    ("dapo", dict(loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.0,
                  scale_rewards="group", overlong_max=12, overlong_cache=4)),
    ("dr_grpo", dict(loss_type="dr_grpo", scale_rewards="none", max_completion_length=12,
                     beta=0.0)),
    ("gspo", dict(importance_sampling_level="sequence", loss_type="grpo", epsilon_low=3e-4,
                  epsilon_high=4e-4, beta=0.0, minibatches=2)),
])
def test_presets_set_the_papers_settings(compose, preset, expected):
    from omegaconf import OmegaConf

    from prefopt import registry

    config = OmegaConf.to_object(compose(f"objective={preset}",
                                         "rollout.max_new_tokens=12").objective)
    objective = registry.build(config)
    assert isinstance(objective, GRPO)
    got = {k: getattr(config, k) for k in expected}
    assert {k: getattr(v, "value", v) for k, v in got.items()} == expected
    assert not objective.needs().reference  # β = 0: no reference model


def test_a_typo_in_a_setting_or_a_preset_key_names_the_key(compose):
    from hydra.errors import ConfigCompositionException

    for overrides in (["objective=grpo", "objective.epsilon_hgh=0.3"],
                      ["objective=dapo", "rollout.dynamic_sampeling=true"]):
        with pytest.raises(ConfigCompositionException) as error:
            compose(*overrides)
        key = overrides[1].split("=")[0]
        assert key in str(error.value) or key in str(error.value.__cause__)
