"""BCO against hand derivations (with the running reward shift δ), the paper's classifier
loss, TRL's `bco_pair` (which has no δ), and its state across a checkpoint."""

import pytest
import torch

from prefopt.objective import UnpairedLogps
from prefopt.plugins.bco import BCO, RunningMean, bco_loss
from prefopt.testing import check_objective


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def step(bco, records, grad=True):
    """The loss of one batch: a training step where the log-probs carry a gradient."""
    logps, ref_logps, labels = records
    return bco.loss(UnpairedLogps(logps=t(*logps).requires_grad_(grad),
                                  tokens=torch.ones(len(labels)), labels=torch.tensor(labels),
                                  ref_logps=t(*ref_logps)))


# β = 1. Batch 1: rewards log π - log π_ref = (1, -1, 0), labels (+, -, +).
FIRST = ([-1.0, -3.0, -2.0], [-2.0, -2.0, -2.0], [True, False, True])
# Batch 2: rewards (2, 2), labels (+, -).
SECOND = ([0.0, 0.0], [-2.0, -2.0], [True, False])


def test_matches_hand_derivation_with_the_running_shift():
    bco = BCO(BCO.Config(beta=1.0))
    # Step 1: δ = mean(1, -1, 0) = 0.
    #   + r = 1:  -log σ(1) = 0.3132616875;  - r = -1: -log σ(1) = 0.3132616875;
    #   + r = 0:  -log σ(0) = 0.6931471806;  mean = 0.4398901852.
    out = step(bco, FIRST)
    assert out.metrics["bco/delta"].item() == 0.0
    assert out.loss.item() == pytest.approx(0.4398901852, abs=1e-9)
    # accuracies: 1 > 0 right, -1 < 0 right, 0 == 0 half.
    torch.testing.assert_close(out.metrics["rewards/accuracies"], torch.tensor([1.0, 1.0, 0.5]))
    # Step 2: δ = (1 - 1 + 0 + 2 + 2) / 5 = 0.8.
    #   + r = 2: -log σ(1.2) = 0.2632824673;  - r = 2: -log σ(-1.2) = 1.4632824673
    #   mean = 0.8632824673.
    out = step(bco, SECOND)
    assert out.metrics["bco/delta"].item() == pytest.approx(0.8)
    assert out.loss.item() == pytest.approx(0.8632824673, abs=1e-9)


def test_validation_reads_delta_without_moving_it():
    bco = BCO(BCO.Config(beta=1.0))
    step(bco, SECOND)  # δ = 2
    with torch.no_grad():
        out = step(bco, FIRST, grad=False)
    assert out.metrics["bco/delta"].item() == 2.0
    assert bco.reward_mean.mean == 2.0 and bco.reward_mean.count == 2
    # 1 - 2 = -1 for a desirable one: -log σ(-1) = 1.3132616875 ...
    expected = (1.3132616875 + 0.0485873516 + 2.1269280110) / 3
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)


def test_state_survives_a_checkpoint_round_trip():
    trained = BCO(BCO.Config(beta=1.0))
    step(trained, FIRST), step(trained, SECOND)
    resumed = BCO(BCO.Config(beta=1.0))
    resumed.load_state_dict(trained.state_dict())
    assert resumed.state_dict() == {"reward_mean": pytest.approx(0.8), "reward_count": 5}
    assert step(resumed, FIRST).loss.item() == step(trained, FIRST).loss.item()
    fresh = BCO(BCO.Config(beta=1.0))
    assert step(fresh, FIRST).loss.item() != pytest.approx(step(resumed, FIRST).loss.item())


def test_running_mean_is_the_mean_of_everything_added():
    values = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = RunningMean()
    for chunk in values.split(7):
        mean.add(float(chunk.sum()), chunk.numel())
    mean.add(0.0, 0)
    assert mean.mean == pytest.approx(values.mean().item(), rel=1e-12) and mean.count == 50


def test_is_the_papers_binary_classifier(random_pairs):
    # Binary cross-entropy of σ(r - δ) against the label, written as such.
    p = random_pairs()
    labels = torch.arange(16) % 3 == 0
    beta, delta = 0.1, 0.3
    prob = torch.sigmoid(beta * (p["chosen"] - p["ref_chosen"]) - delta)
    expected = torch.nn.functional.binary_cross_entropy(prob, labels.double(), reduction="none")
    got, _ = bco_loss(p["chosen"], p["ref_chosen"], labels, beta=beta, delta=delta)
    torch.testing.assert_close(got, expected)


def test_trl_bco_pair_is_bco_without_the_shift(random_pairs, dpo_trainer_loss):
    # TRL's bco_pair: -log σ(r_w) - log σ(-r_l) per pair, δ = 0 always. prefopt's δ = 0
    # on the pairs' completions as unpaired examples, summed per pair, is the same number.
    p = random_pairs(seed=12)
    # The policy 5 nats above its reference on average: a mean reward β · 5 = 1.
    p["chosen"], p["rejected"] = p["ref_chosen"] + 5 + p["chosen"] / 10, \
        p["ref_rejected"] + 5 - p["rejected"] / 10
    logps = torch.cat([p["chosen"], p["rejected"]])
    ref = torch.cat([p["ref_chosen"], p["ref_rejected"]])
    labels = torch.cat([torch.ones(16, dtype=torch.bool), torch.zeros(16, dtype=torch.bool)])
    losses, _ = bco_loss(logps, ref, labels, beta=0.2, delta=0.0)
    trl = dpo_trainer_loss("bco_pair", *p.values(), beta=0.2)
    assert 2 * losses.mean().item() == pytest.approx(trl.item(), rel=1e-12)
    # With the running shift (the mean reward of this batch) the two differ.
    bco = BCO(BCO.Config(beta=0.2))
    shifted = bco.loss(UnpairedLogps(logps=logps.clone().requires_grad_(),
                                     tokens=torch.ones(32), labels=labels, ref_logps=ref))
    delta = 0.2 * (logps - ref).mean()
    assert shifted.metrics["bco/delta"].item() == pytest.approx(delta.item(), rel=1e-12)
    assert 0.5 < delta.item() < 1.5
    assert 2 * shifted.loss.item() != pytest.approx(trl.item(), rel=1e-3)


def test_conforms():
    check_objective(BCO, "bco")
