"""The invariance checks (prefopt.testing.invariance): reference-free, absent values, and
batch, listing and attribute order."""

import dataclasses

import pytest
import torch

from prefopt.objective import LossOutput
from prefopt.plugins.kto import KTO
from prefopt.plugins.reward_models import RewardBT, RewardPL, bradley_terry_loss
from prefopt.plugins.steerlm import AttributeModel, SteerLM, masked_mse
from prefopt.testing import REFERENCE_FIELDS, ConformanceError, check_loss

# -- reference-free ---------------------------------------------------------------------

@pytest.mark.parametrize("toy", ["Margin", "Desirability", "Listwise", "Conditioned"],
                         indirect=True)
def test_reference_free_that_reads_the_reference(toy, run):
    class Peeks(toy):
        def loss(self, inputs):
            # Log-ratios whenever reference log-probs are there: it does use the reference.
            ratios = {policy: getattr(inputs, policy) - getattr(inputs, ref)
                      for ref, policy in REFERENCE_FIELDS[type(inputs)].items()
                      if getattr(inputs, ref) is not None}
            return super().loss(dataclasses.replace(inputs, **ratios))

    with pytest.raises(ConformanceError, match=r"needs\(\)\.reference is False, but 'loss' "
                                               r"changes by [0-9.e+-]+ when the objective is "
                                               r"handed the reference model's log-probs"):
        run(Peeks)


def test_reference_free_that_fails_on_reference_log_probs(toys, run):
    class Refuses(toys.Margin):
        def loss(self, inputs):
            if inputs.ref_chosen is not None:
                raise ValueError("reference log-probs given")
            return super().loss(inputs)

    with pytest.raises(ConformanceError, match=r"loss\(\) fails when handed the reference "
                                               r"model's log-probs: ValueError"):
        run(Refuses)


# -- absent values ----------------------------------------------------------------------

def test_attribute_model_that_ignores_the_present_mask():
    class Unmasked(AttributeModel):
        def loss(self, inputs):
            out = super().loss(inputs)
            # Every entry counts: a value a record lacks is read as its target (0).
            return LossOutput(torch.nn.functional.mse_loss(inputs.predictions, inputs.targets),
                              out.metrics)

    with pytest.raises(ConformanceError, match=r"'loss' changes by [0-9.e+-]+ when the targets "
                                               r"of absent values \(present False\) change: a "
                                               r"value a record does not give must be masked"):
        check_loss(Unmasked(Unmasked.Config(name="attribute_model")), "attribute_model")


def test_attribute_metric_that_reads_absent_targets(toys, run):
    class Peeks(toys.Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["regression/mean_target"] = inputs.targets.mean()
            return out

    with pytest.raises(ConformanceError, match=r"'regression/mean_target' changes by "):
        run(Peeks)


# -- batch, listing and attribute order -------------------------------------------------

def test_loss_that_depends_on_batch_order(toys, run):
    class Positional(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(0.5, 1.5, len(inputs.chosen))
            losses = torch.nn.functional.softplus(-(inputs.chosen - inputs.rejected))
            return LossOutput((weights * losses).mean(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the pairs "
                                               r"in the batch: it differs by [0-9.e+-]+"):
        run(Positional)


def test_per_pair_metric_not_permuted_with_the_pairs(toys, run):
    class Indexed(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/position"] = torch.arange(len(inputs.chosen)).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/position' depends on the "
                                               r"order of the pairs"):
        run(Indexed)


def test_reward_model_loss_that_depends_on_batch_order():
    class Positional(RewardBT):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(0.5, 1.5, len(inputs.chosen))
            losses = bradley_terry_loss(inputs.chosen, inputs.rejected, inputs.margins)
            return LossOutput((weights * losses).mean(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the pairs"):
        check_loss(Positional(Positional.Config(name="reward_bt")), "reward_bt")


def test_kto_whose_loss_depends_on_batch_order_beyond_kl_ratio():
    class FirstExampleZ0(KTO):
        def loss(self, inputs):
            # The reference point from whichever example comes first: not KTO's estimate.
            z0 = (inputs.logps[0] - inputs.ref_logps[0]).detach().abs()
            return super().loss(dataclasses.replace(inputs, kl_ratio=z0))

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the "
                                               r"examples in the batch \(kl_ratio held fixed\)"):
        check_loss(FirstExampleZ0(FirstExampleZ0.Config(name="kto")), "kto")


def test_metric_over_one_class_not_reordered_with_it(toys, run):
    class Indexed(toys.Desirability):
        def loss(self, inputs):
            out = super().loss(inputs)
            # The desirable examples' length, but not their values: a position in the class.
            out.metrics["desirability/position"] = torch.arange(int(inputs.labels.sum())).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'desirability/position' depends on "
                                               r"the order of the examples in the batch"):
        run(Indexed)


def test_per_prompt_metric_not_reordered_with_the_prompts(toys, run):
    class Indexed(toys.Listwise):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["listwise/group"] = torch.arange(int(inputs.group.max()) + 1).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'listwise/group' depends on the order "
                                               r"of the prompts in the batch"):
        run(Indexed)


def test_steerlm_whose_loss_depends_on_batch_order():
    class Positional(SteerLM):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(0.5, 1.5, len(inputs.logps))
            return LossOutput(-(weights * inputs.logps).sum() / inputs.tokens.sum(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the "
                                               r"responses in the batch: it differs by"):
        check_loss(Positional(Positional.Config(name="steerlm")), "steerlm")


def test_per_response_metric_not_permuted_with_the_responses(toys, run):
    class Indexed(toys.Conditioned):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["conditioned/position"] = torch.arange(len(inputs.logps)).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'conditioned/position' depends on the "
                                               r"order of the responses in the batch"):
        run(Indexed)


def test_attribute_model_whose_loss_depends_on_batch_order():
    class Positional(AttributeModel):
        def loss(self, inputs):
            out = super().loss(inputs)
            first = masked_mse(inputs.predictions[:1], inputs.targets[:1], inputs.present[:1])
            return LossOutput(out.loss + first, out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the "
                                               r"responses in the batch \(rows of predictions, "
                                               r"targets and present moved together\)"):
        check_loss(Positional(Positional.Config(name="attribute_model")), "attribute_model")


def test_metric_over_the_responses_giving_an_attribute_not_reordered_with_them(toys, run):
    class Indexed(toys.Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            # The length of the responses giving `order`, but a position among them.
            given = int(inputs.present[:, inputs.names.index("order")].sum())
            out.metrics["regression/order_position"] = torch.arange(given).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'regression/order_position' depends on "
                                               r"the order of the responses in the batch"):
        run(Indexed)


def test_attribute_model_that_weighs_attributes_by_position(toys, run):
    class FirstMatters(toys.Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(2.0, 1.0, len(inputs.names))  # the first listed most
            squared = (inputs.predictions - inputs.targets) ** 2 * inputs.present * weights
            return LossOutput(squared.sum() / inputs.present.sum(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the "
                                               r"attributes in the schema .* names, not "
                                               r"positions, say which attribute"):
        run(FirstMatters)


def test_attribute_metric_that_assumes_the_schema_order(toys, run):
    class Hardcoded(toys.Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            # Column 0 taken for `quality`: true of the synthetic schema, not of a user's.
            out.metrics["regression/quality_error"] = \
                (inputs.predictions[:, 0] - inputs.targets[:, 0]).detach().abs()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'regression/quality_error' depends on "
                                               r"the order of the attributes in the schema"):
        run(Hardcoded)


def listing_positions(group):
    """Each row's position among its prompt's rows (rows are grouped by prompt)."""
    return torch.cat([torch.arange(int(n)) for n in torch.bincount(group)])


def test_ranked_loss_that_depends_on_listing_order(toys, run):
    class ListedFirstIsBest(toys.Listwise):
        def ranks(self, inputs):
            return listing_positions(inputs.group)

    # Reordering whole prompts keeps each prompt's listing: only the listing check sees it.
    with pytest.raises(ConformanceError, match=r"the loss depends on the order in which each "
                                               r"prompt's completions are listed: it differs "
                                               r"by [0-9.e+-]+ .* ranks, not positions"):
        run(ListedFirstIsBest)


def test_per_completion_metric_that_stays_in_place(toys, run):
    class Indexed(toys.Listwise):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["listwise/position"] = listing_positions(inputs.group).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'listwise/position' depends on the "
                                               r"order in which each prompt's completions"):
        run(Indexed)


def test_reward_model_on_rankings_that_depends_on_listing_order():
    class ListedFirstIsBest(RewardPL):
        def loss(self, inputs):
            ranks = listing_positions(inputs.group)
            return super().loss(dataclasses.replace(inputs, ranks=ranks))

    with pytest.raises(ConformanceError, match=r"the loss depends on the order in which each "
                                               r"prompt's completions are listed"):
        check_loss(ListedFirstIsBest(ListedFirstIsBest.Config(name="reward_pl")), "reward_pl")


# -- per-token log-probs (needs().token_logps) --------------------------------------------

# The per-token fields of each log-prob input, by the summed field they add up to.
TOKEN_FIELDS = {"Margin": {"chosen": ("chosen_token_logps", "chosen_token_mask"),
                           "rejected": ("rejected_token_logps", "rejected_token_mask")},
                "Desirability": {"logps": ("token_logps", "token_mask")},
                "Listwise": {"logps": ("token_logps", "token_mask")},
                "Conditioned": {"logps": ("token_logps", "token_mask")}}


def _per_token(toy):
    """The toy on its per-token inputs: each summed field rebuilt as Σ over the mask."""
    fields = TOKEN_FIELDS[toy.__name__]

    class PerToken(toy):
        def needs(self):
            return dataclasses.replace(super().needs(), token_logps=True)

        def sums(self, inputs):
            return {summed: (getattr(inputs, logps) * getattr(inputs, mask)).sum(-1)
                    for summed, (logps, mask) in fields.items()}

        def loss(self, inputs):
            sums = self.sums(inputs)
            for summed, value in sums.items():  # what prefopt hands must add up
                torch.testing.assert_close(value, getattr(inputs, summed))
            return super().loss(dataclasses.replace(inputs, **sums))

    return PerToken


@pytest.mark.parametrize("toy", list(TOKEN_FIELDS), indirect=True)
def test_per_token_inputs_pass_every_check(toy, run):
    assert "batch order" in run(_per_token(toy))


@pytest.mark.parametrize("toy", list(TOKEN_FIELDS), indirect=True)
def test_per_token_loss_that_depends_on_batch_order(toy, run):
    (summed, (logps, mask)), *_ = TOKEN_FIELDS[toy.__name__].items()

    class Positional(_per_token(toy)):
        def sums(self, inputs):
            sums = super().sums(inputs)
            first_row = getattr(inputs, logps)[0]  # the first row's tokens, whatever it is
            sums[summed] = sums[summed] + 0.5 * first_row.sum()
            return sums

        def loss(self, inputs):
            return toy.loss(self, dataclasses.replace(inputs, **self.sums(inputs)))

    with pytest.raises(ConformanceError, match=r"depends on the order of the"):
        run(Positional)


def test_reference_free_per_token_loss_that_reads_the_reference(toys, run):
    class Peeks(_per_token(toys.Margin)):
        def sums(self, inputs):
            sums = super().sums(inputs)
            if inputs.ref_chosen_token_logps is not None:
                sums["chosen"] = sums["chosen"] - (inputs.ref_chosen_token_logps
                                                   * inputs.chosen_token_mask).sum(-1)
            return sums

        def loss(self, inputs):
            return toys.Margin.loss(self, dataclasses.replace(inputs, **self.sums(inputs)))

    with pytest.raises(ConformanceError, match=r"needs\(\)\.reference is False, but 'loss' "
                                               r"changes by [0-9.e+-]+ when the objective is "
                                               r"handed the reference model's log-probs"):
        run(Peeks)
