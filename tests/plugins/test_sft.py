"""SFT: the negative log-likelihood of the preferred completions, by hand."""

import pytest
import torch

from prefopt.objective import PairwiseLogps
from prefopt.plugins.sft import SFT


def _inputs(chosen):
    return PairwiseLogps(chosen=chosen, rejected=torch.tensor([-1.0, -9.0]),
                         chosen_tokens=torch.tensor([2, 3]), rejected_tokens=torch.tensor([1, 4]))


@pytest.mark.parametrize("average,expected,grad", [
    ("token", (2 + 6) / 5, [-1 / 5, -1 / 5]),  # Σ NLL / Σ tokens
    ("sequence", (2 / 2 + 6 / 3) / 2, [-1 / 4, -1 / 6]),  # mean of per-token NLLs
])
def test_loss_and_gradient_by_hand(average, expected, grad):
    chosen = torch.tensor([-2.0, -6.0], requires_grad=True)
    out = SFT(SFT.Config(name="sft", average=average)).loss(_inputs(chosen))
    assert out.loss.item() == pytest.approx(expected)
    out.loss.backward()
    torch.testing.assert_close(chosen.grad, torch.tensor(grad))


def test_rejected_completions_only_feed_the_metrics():
    out = SFT(SFT.Config(name="sft")).loss(_inputs(torch.tensor([-2.0, -6.0])))
    # log π(y_w) > log π(y_l) for the second pair only: −6 > −9, −2 < −1
    assert out.metrics["rewards/accuracies"].tolist() == [0.0, 1.0]
    torch.testing.assert_close(out.metrics["sft/nll_per_token"], torch.tensor([1.0, 2.0]))
    assert SFT(SFT.Config(name="sft")).needs().reference is False


def test_token_average_divides_by_the_total_token_count():
    # A completion of 0 tokens adds nothing to the sum and nothing to the count:
    # L = (3 + 0) / (3 + 0) = 1, not 3 / (3 + max(0, 1)) = 0.75.
    inputs = PairwiseLogps(chosen=torch.tensor([-3.0, 0.0]), rejected=torch.tensor([-1.0, -1.0]),
                           chosen_tokens=torch.tensor([3, 0]),
                           rejected_tokens=torch.tensor([1, 1]))
    out = SFT(SFT.Config(name="sft", average="token")).loss(inputs)
    assert out.loss.item() == pytest.approx(1.0)


def test_token_average_of_a_batch_without_tokens_is_zero_not_nan():
    chosen = torch.zeros(2, requires_grad=True)
    inputs = PairwiseLogps(chosen=chosen, rejected=torch.tensor([-1.0, -1.0]),
                           chosen_tokens=torch.tensor([0, 0]),
                           rejected_tokens=torch.tensor([1, 1]))
    out = SFT(SFT.Config(name="sft", average="token")).loss(inputs)
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(chosen.grad).all()
