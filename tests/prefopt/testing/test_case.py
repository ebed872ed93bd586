"""The synthetic case the tensor checks run on (prefopt.testing.case), and the checks on
it: what prefopt-train cannot feed is refused, and the loss reaches every parameter."""

import dataclasses

import pytest
import torch

from prefopt.objective import BatchFormat, LossOutput, Needs
from prefopt.plugins.reward_models import RewardBT, RewardPL
from prefopt.plugins.steerlm import AttributeModel, SteerLM
from prefopt.testing import FED_FORMATS, ConformanceError, check_loss
from prefopt.testing.case import N_RECORDS, _cached_batch, _case, _models, _schema
from prefopt.testing.metrics import REQUIRED_METRICS


def test_the_kit_feeds_what_prefopt_train_feeds():
    from prefopt.objective import FED_FORMATS as TRAIN_FED_FORMATS

    assert FED_FORMATS == TRAIN_FED_FORMATS
    assert set(REQUIRED_METRICS) == set(TRAIN_FED_FORMATS)
    assert set(TRAIN_FED_FORMATS) == set(BatchFormat) - {BatchFormat.PROMPTS}


def test_attribute_models_get_the_schema_and_unconditioned_records(toys):
    """The kit's attribute model has one output per attribute of the synthetic schema and
    reads the records without their attribute line, as prefopt-train builds it."""
    objective = toys.Regression(toys.Regression.Config(name="regression"))
    case = _case(objective)
    schema = _schema()
    assert case.inputs.predictions.shape == (N_RECORDS, len(schema))
    assert case.inputs.names == schema.names
    assert case.model.config.num_labels == len(schema)
    # Some values absent (the absent-values check needs them), and some given.
    assert 0 < int(case.inputs.present.sum()) < case.inputs.present.numel()
    conditioned = _case(toys.Conditioned(toys.Conditioned.Config(name="conditioned")))
    assert case.batch["input_ids"].shape[1] < conditioned.batch["input_ids"].shape[1]


def test_the_kit_leaves_the_random_state_alone(toys, run):
    # Nothing cached: building the models and collating the first batch of a kind (the
    # DataLoader's base seed) both draw random numbers.
    _models.cache_clear()
    _cached_batch.cache_clear()
    state = torch.random.get_rng_state()
    run(toys.Margin)
    run(toys.Regression)  # the reward model with one output per attribute
    assert torch.equal(torch.random.get_rng_state(), state)


# -- formats and needs prefopt-train cannot feed ----------------------------------------

def test_prompts_are_outside_the_kit(toys, run):
    class Online(toys.Margin):
        batch_format = BatchFormat.PROMPTS

    with pytest.raises(ConformanceError, match=r"consumes prompts: an online objective, "
                                               r"which this kit does not cover"):
        run(Online)


@pytest.mark.parametrize("needs,message", [
    (Needs(reference=False, reward_model=True),
     r"cannot be trained by prefopt-train: it trains a reward model on unpaired records; "
     r"reward models are trained on pairwise, ranked, attributed records"),
    (Needs(reference=False, mismatched_pairs=True),
     r"asks for mismatched_pairs \(kl_ratio, a mean of log π/π_ref\) without a reference "
     r"model \(needs\(\)\.reference\)"),
])
def test_needs_prefopt_train_cannot_feed(needs, message, toys, run):
    class Unfed(toys.Desirability):
        def needs(self):
            return needs

    with pytest.raises(ConformanceError, match=message):
        run(Unfed)


def test_mismatched_pairs_only_where_the_format_carries_them(toys, run):
    """Pairs have no kl_ratio field: asking for mismatched rows there would compute a KL
    estimate nobody receives."""
    class Unfed(toys.Margin):
        def needs(self):
            return Needs(reference=True, mismatched_pairs=True)

    with pytest.raises(ConformanceError,
                       match=r"asks for mismatched_pairs, which only unpaired batches carry"):
        run(Unfed)


# -- loss and gradients -----------------------------------------------------------------

def test_loss_without_gradient(toys, run):
    class Detached(toys.Margin):
        def rewards(self, inputs):
            return inputs.chosen.detach(), inputs.rejected.detach()

    with pytest.raises(ConformanceError, match=r"the loss carries no gradient: it does not "
                                               r"depend on the policy's log-probs"):
        run(Detached)


@pytest.mark.parametrize("cls", [RewardBT, RewardPL])
def test_reward_model_loss_that_detaches_the_scores(cls):
    class Detached(cls):
        def loss(self, inputs):
            return super().loss(dataclasses.replace(inputs, **{
                f.name: getattr(inputs, f.name).detach() for f in dataclasses.fields(inputs)}))

    name = {RewardBT: "reward_bt", RewardPL: "reward_pl"}[cls]
    with pytest.raises(ConformanceError, match=r"the loss carries no gradient: it does not "
                                               r"depend on the reward model's scores"):
        check_loss(Detached(Detached.Config(name=name)), name)


def test_non_finite_loss(toys, run):
    class Exploding(toys.Margin):
        def rewards(self, inputs):
            return inputs.chosen * float("inf"), inputs.rejected

    with pytest.raises(ConformanceError, match=r"the loss is not finite on the tiny model"):
        run(Exploding)


def test_non_finite_gradients(toys, run):
    class Steep(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            # sqrt at 0: a finite loss whose derivative is infinite.
            return LossOutput(out.loss + (inputs.chosen - inputs.chosen.detach()).sqrt().sum(),
                              out.metrics)

    with pytest.raises(ConformanceError, match=r"non-finite gradients in 21 of 21 policy "
                                               r"parameters"):
        run(Steep)


def test_all_zero_gradients(toys, run):
    class Flat(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            return LossOutput(0.0 * out.loss, out.metrics)

    with pytest.raises(ConformanceError, match=r"every policy gradient is exactly zero"):
        run(Flat)


def test_steerlm_that_detaches_the_log_probs():
    class Detached(SteerLM):
        def loss(self, inputs):
            return super().loss(dataclasses.replace(inputs, logps=inputs.logps.detach()))

    with pytest.raises(ConformanceError, match=r"the loss carries no gradient: it does not "
                                               r"depend on the policy's log-probs"):
        check_loss(Detached(Detached.Config(name="steerlm")), "steerlm")


def test_attribute_model_that_detaches_the_predictions():
    class Detached(AttributeModel):
        def loss(self, inputs):
            return super().loss(dataclasses.replace(inputs,
                                                    predictions=inputs.predictions.detach()))

    with pytest.raises(ConformanceError, match=r"the loss carries no gradient: it does not "
                                               r"depend on the reward model's attribute "
                                               r"predictions"):
        check_loss(Detached(Detached.Config(name="attribute_model")), "attribute_model")
