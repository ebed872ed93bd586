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
