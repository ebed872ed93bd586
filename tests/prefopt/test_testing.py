"""The conformance kit: the built-ins pass it, and each kind of violation is caught."""

import dataclasses
import importlib
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
import torch

from prefopt import registry, testing
from prefopt.objective import (BatchFormat, LossOutput, Needs, Objective, ObjectiveConfig,
                               preference_metrics)
from prefopt.plugins.dpo import DPO
from prefopt.plugins.ipo import IPO
from prefopt.plugins.kto import KTO
from prefopt.plugins.kwise import plackett_luce_nll, ranking_metrics
from prefopt.plugins.reward_models import RewardBT, RewardPL, bradley_terry_loss
from prefopt.plugins.steerlm import AttributeModel, SteerLM, masked_mse, response_nll
from prefopt.testing import (REFERENCE_FIELDS, REFERENCE_FREE_NOT_APPLICABLE,
                             ConformanceError, check_config, check_declaration,
                             check_entry_point, check_loss, check_objective)

NOT_APPLICABLE = REFERENCE_FREE_NOT_APPLICABLE


def tensor_checks(ran):
    """The tensor checks of one configuration, in the order they ran."""
    return [c for c in ran if c not in ("declaration", "entry point") and
            not c.startswith("config ")]


def test_dpo_conforms_in_every_mode():
    ran = check_objective(DPO, "dpo", configs=[
        DPO.Config(),
        DPO.Config(reference_free=True, length_normalize=True, label_smoothing=0.1)])
    assert ran.count("reference-free") == 1  # only the reference-free configuration
    assert {"entry point", "config round trip", "config unknown key", "config types"} <= set(ran)
    assert tensor_checks(ran) == [
        "loss and gradients", "metric names", "batch order",
        "loss and gradients", "metric names", "reference-free", "batch order"]


BUILTIN_CHECKS = {
    "sft": ["loss and gradients", "metric names", "reference-free", "batch order"],
    "ipo": ["loss and gradients", "metric names", "batch order"],
    "kto": ["loss and gradients", "metric names", "batch order"],
    "kwise": ["loss and gradients", "metric names", "batch order", "listing order"],
    "reward_bt": ["loss and gradients", "metric names", NOT_APPLICABLE, "batch order"],
    "reward_pl": ["loss and gradients", "metric names", NOT_APPLICABLE, "batch order",
                  "listing order"],
    "steerlm": ["loss and gradients", "metric names", "reference-free", "batch order"],
    "attribute_model": ["loss and gradients", "metric names", NOT_APPLICABLE, "absent values",
                        "batch order", "attribute order"],
}


@pytest.mark.parametrize("name,checks", list(BUILTIN_CHECKS.items()))
def test_builtins_of_every_format_conform(name, checks):
    ran = check_objective(registry.load(name), name)
    assert tensor_checks(ran) == checks


def test_every_builtin_is_checked():
    builtins = {name for name, info in registry.discover().items()
                if info.distribution == "prefopt"}
    # dpo: in every mode, above. The kit checks objectives on recorded data; online ones
    # (prompts in, samples scored at every step) have their own tests
    # (tests/plugins/test_reinforce.py, test_ppo.py, tests/prefopt/test_online.py).
    assert builtins == {"dpo", *BUILTIN_CHECKS, *ONLINE}


ONLINE = {"reinforce", "ppo"}


@pytest.mark.parametrize("name", sorted(ONLINE))
def test_online_objectives_are_refused_by_the_kit_with_a_reason(name):
    with pytest.raises(ConformanceError, match="prompts"):
        check_objective(registry.load(name), name)


def test_the_kit_feeds_what_prefopt_train_feeds():
    from prefopt import train

    assert testing.FED_FORMATS == train.FED_FORMATS
    assert set(testing.REQUIRED_METRICS) == set(train.FED_FORMATS)


# -- correct toy objectives, one per format; the broken ones below change one thing -----

class Margin(Objective):
    """A correct reference-free pairwise objective."""

    batch_format = BatchFormat.PAIRWISE
    kit_name = "margin"  # the name the checks below run it under

    @dataclass
    class Config(ObjectiveConfig):
        beta: float = 1.0

    def needs(self):
        return Needs(reference=False)

    def rewards(self, inputs):
        return inputs.chosen, inputs.rejected

    def loss(self, inputs):
        chosen, rejected = self.rewards(inputs)
        losses = torch.nn.functional.softplus(-(chosen - rejected))
        return LossOutput(losses.mean(), preference_metrics(chosen, rejected))


class Desirability(Margin):
    """A correct reference-free unpaired objective: desirable log-probs up, others down."""

    batch_format = BatchFormat.UNPAIRED
    kit_name = "desirability"

    def loss(self, inputs):
        sign = inputs.labels.float() * 2 - 1
        rewards = inputs.logps / inputs.tokens.clamp(min=1)
        losses = torch.nn.functional.softplus(-sign * rewards)
        r = rewards.detach()
        return LossOutput(losses.mean(), {
            "rewards/chosen": r[inputs.labels], "rewards/rejected": r[~inputs.labels],
            "rewards/accuracies": (sign * r > 0).float()})


class Listwise(Margin):
    """A correct reference-free ranked objective: Plackett-Luce on the log-probs."""

    batch_format = BatchFormat.RANKED
    kit_name = "listwise"

    def ranks(self, inputs):
        return inputs.ranks

    def loss(self, inputs):
        ranks = self.ranks(inputs)
        losses = plackett_luce_nll(inputs.logps, ranks, inputs.group)
        return LossOutput(losses.mean(), ranking_metrics(inputs.logps, ranks, inputs.group))


class Conditioned(Margin):
    """A correct reference-free objective on attributed records: SteerLM's NLL, with a
    metric of its own and no shared one (attributed records hold no preferences)."""

    batch_format = BatchFormat.ATTRIBUTED
    kit_name = "conditioned"
    monitor = ("loss", "min")

    def loss(self, inputs):
        per_token = inputs.logps / inputs.tokens.clamp(min=1)
        return LossOutput(response_nll(inputs.logps, inputs.tokens, "token"),
                          {"conditioned/nll_per_token": -per_token.detach()})


class Regression(Margin):
    """A correct attribute model: masked MSE, the shared per-attribute metrics over the
    responses giving each attribute, and one per-response metric of its own."""

    batch_format = BatchFormat.ATTRIBUTED
    kit_name = "regression"
    monitor = ("attributes/quality/mae", "min")

    def needs(self):
        return Needs(reference=False, reward_model=True)

    def loss(self, inputs):
        error = (inputs.predictions.detach() - inputs.targets) * inputs.scale
        metrics = {"regression/abs_error": (error.abs() * inputs.present).sum(1)}
        for a, attribute in enumerate(inputs.names):
            metrics[f"attributes/{attribute}/mae"] = error[inputs.present[:, a], a].abs()
        return LossOutput(masked_mse(inputs.predictions, inputs.targets, inputs.present),
                          metrics)


def run(cls):
    return check_loss(cls(cls.Config(name=cls.kit_name)), cls.kit_name)


@pytest.mark.parametrize("cls,orders", [(Margin, ["batch order"]),
                                        (Desirability, ["batch order"]),
                                        (Listwise, ["batch order", "listing order"]),
                                        (Conditioned, ["batch order"])])
def test_the_base_cases_pass(cls, orders):
    assert run(cls) == ["loss and gradients", "metric names", "reference-free", *orders]


def test_the_attribute_model_base_case_passes():
    assert run(Regression) == ["loss and gradients", "metric names", NOT_APPLICABLE,
                               "absent values", "batch order", "attribute order"]


def test_attribute_models_get_the_schema_and_unconditioned_records():
    """The kit's attribute model has one output per attribute of the synthetic schema and
    reads the records without their attribute line, as prefopt-train builds it."""
    objective = Regression(Regression.Config(name="regression"))
    case = testing._case(objective)
    schema = testing._schema()
    assert case.inputs.predictions.shape == (testing.N_RECORDS, len(schema))
    assert case.inputs.names == schema.names
    assert case.model.config.num_labels == len(schema)
    # Some values absent (the absent-values check needs them), and some given.
    assert 0 < int(case.inputs.present.sum()) < case.inputs.present.numel()
    conditioned = testing._case(Conditioned(Conditioned.Config(name="conditioned")))
    assert case.batch["input_ids"].shape[1] < conditioned.batch["input_ids"].shape[1]


def test_the_kit_leaves_the_random_state_alone():
    testing._models.cache_clear()  # building the models is what draws random numbers
    state = torch.random.get_rng_state()
    run(Margin)
    run(Regression)  # the reward model with one output per attribute
    assert torch.equal(torch.random.get_rng_state(), state)


# -- formats and needs prefopt-train cannot feed ----------------------------------------

def test_prompts_are_outside_the_kit():
    class Online(Margin):
        batch_format = BatchFormat.PROMPTS

    with pytest.raises(ConformanceError, match=r"consumes prompts: an online objective, "
                                               r"which this kit does not cover"):
        run(Online)


@pytest.mark.parametrize("needs,message", [
    (Needs(reference=False, reward_model=True),
     r"trains a reward model on unpaired records, which prefopt-train cannot feed yet"),
    (Needs(reference=False, mismatched_pairs=True),
     r"declares needs\(\)\.mismatched_pairs without needs\(\)\.reference"),
])
def test_needs_prefopt_train_cannot_feed(needs, message):
    class Unfed(Desirability):
        def needs(self):
            return needs

    with pytest.raises(ConformanceError, match=message):
        run(Unfed)


# -- loss and gradients -----------------------------------------------------------------

def test_loss_without_gradient():
    class Detached(Margin):
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


def test_non_finite_loss():
    class Exploding(Margin):
        def rewards(self, inputs):
            return inputs.chosen * float("inf"), inputs.rejected

    with pytest.raises(ConformanceError, match=r"the loss is not finite on the tiny model"):
        run(Exploding)


def test_non_finite_gradients():
    class Steep(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            # sqrt at 0: a finite loss whose derivative is infinite.
            return LossOutput(out.loss + (inputs.chosen - inputs.chosen.detach()).sqrt().sum(),
                              out.metrics)

    with pytest.raises(ConformanceError, match=r"non-finite gradients in 21 of 21 policy "
                                               r"parameters"):
        run(Steep)


def test_all_zero_gradients():
    class Flat(Margin):
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


# -- metrics ----------------------------------------------------------------------------

@pytest.mark.parametrize("key,message", [
    ("margin_gap", r"metric names \['margin_gap'\] are neither in the shared schema"),
    ("dpo/gap", r"metric names \['dpo/gap'\] are neither .* nor under 'margin/'"),
    ("rewards/gap", r"metric names \['rewards/gap'\] are neither in the shared schema"),
    ("kl", r"metrics \['kl'\] are logged by the training module itself"),
])
def test_metric_names_follow_the_schema(key, message):
    class Named(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = torch.tensor(0.0)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Named)


@pytest.mark.parametrize("cls,key,message", [
    # Attributed records hold no preferences: no rewards/* for either kind of objective.
    (Conditioned, "rewards/accuracies", r"metric names \['rewards/accuracies'\] are neither "
                                        r"in the shared schema \(none for attributed records"),
    (Regression, "rewards/chosen", r"metric names \['rewards/chosen'\] are neither in the "
                                   r"shared schema attributes/<attribute>/\{mae,accuracy\} "
                                   r"for the attributes \['quality', 'order', 'length'\] nor "
                                   r"under 'regression/'"),
    # attributes/* names the schema's attributes, with the shared metrics only ...
    (Regression, "attributes/helpfulness/mae", r"metric names \['attributes/helpfulness/mae'\]"
                                               r" are neither in the shared schema"),
    (Regression, "attributes/quality/rmse", r"metric names \['attributes/quality/rmse'\] are "
                                            r"neither in the shared schema"),
    # ... and is an attribute model's: a log-prob objective has no predictions to score.
    (Conditioned, "attributes/quality/mae", r"metric names \['attributes/quality/mae'\] are "
                                            r"neither in the shared schema"),
    (Conditioned, "logps/response", r"metrics \['logps/response'\] are logged by the training "
                                    r"module itself"),
])
def test_attributed_metric_names_follow_the_schema(cls, key, message):
    class Named(cls):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = torch.tensor(0.0)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Named)


@pytest.mark.parametrize("cls", [Conditioned, Regression])
def test_attributed_objectives_need_no_metric(cls):
    class Bare(cls):
        monitor = ("loss", "min")

        def loss(self, inputs):
            return LossOutput(super().loss(inputs).loss)

    assert "metric names" in run(Bare)


@pytest.mark.parametrize("cls,monitor,message", [
    # The default, rewards/accuracies, is never logged for attributed records.
    (Conditioned, Objective.monitor, r"Monitored\.monitor names 'rewards/accuracies', which is "
                                     r"not logged for attributed batches .* prefopt-train keeps "
                                     r"the checkpoint with the best val/rewards/accuracies"),
    (Regression, ("val/loss", "min"), r"names 'val/loss', which is not logged .*\(without "
                                      r"the val/ prefix\)"),
    # A reward model has no log-probs: the module logs no entropy for it.
    (Regression, ("entropy", "min"), r"names 'entropy', which is not logged for attributed "
                                     r"batches \(the objective reports \[.*\], the training "
                                     r"module \['loss'\]\)"),
    (Conditioned, ("loss", "lowest"), r"Monitored\.monitor must be \(metric, 'min' or 'max'\), "
                                      r"got \('loss', 'lowest'\)"),
])
def test_monitor_names_a_logged_metric(cls, monitor, message):
    class Monitored(cls):
        pass

    Monitored.monitor = monitor
    with pytest.raises(ConformanceError, match=message):
        run(Monitored)


def test_monitor_may_name_a_module_metric():
    class Monitored(Conditioned):
        monitor = ("logps/response", "max")

    assert "metric names" in run(Monitored)


def test_missing_reward_metrics():
    class Quiet(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            del out.metrics["rewards/margins"]
            return out

    with pytest.raises(ConformanceError, match=r"pairwise objectives report .* \(prefopt\."
                                               r"objective\.preference_metrics computes them\); "
                                               r"missing \['rewards/margins'\]$"):
        run(Quiet)


def test_unpaired_objective_without_accuracies_fails():
    class NoAccuracy(KTO):
        def loss(self, inputs):
            out = super().loss(inputs)
            del out.metrics["rewards/accuracies"]
            return out

    with pytest.raises(ConformanceError, match=r"unpaired objectives report "
                                               r"\['rewards/accuracies'\]; missing "
                                               r"\['rewards/accuracies'\]; prefopt-train keeps "
                                               r"the checkpoint with the best"):
        check_loss(NoAccuracy(NoAccuracy.Config(name="kto")), "kto")


def test_unpaired_objective_needs_only_accuracies():
    # A batch may lack a class, and with it chosen / rejected rewards and margins.
    class AccuracyOnly(Desirability):
        def loss(self, inputs):
            out = super().loss(inputs)
            return LossOutput(out.loss, {"rewards/accuracies": out.metrics["rewards/accuracies"]})

    assert "metric names" in run(AccuracyOnly)


def test_metric_that_keeps_the_graph():
    class Attached(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/raw"] = inputs.chosen - inputs.rejected
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/raw' carries a gradient"):
        run(Attached)


def test_non_finite_metric():
    class Undefined(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/ratio"] = torch.zeros(len(inputs.chosen)) / 0.0
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/ratio' is not finite"):
        run(Undefined)


@pytest.mark.parametrize("cls,key,value,message", [
    (Margin, "margin/table", lambda i: torch.zeros(len(i.chosen), 2),
     r"metric 'margin/table' must be a scalar or a per-pair \[7\] tensor, got shape \[7, 2\]"),
    # rewards/chosen of an unpaired objective covers the desirable examples only.
    (Desirability, "rewards/chosen", lambda i: i.logps.detach(),
     r"metric 'rewards/chosen' must be a scalar or a desirable-example \[4\] "
     r"\(values\[labels\]\) tensor, got shape \[7\]"),
    (Desirability, "desirability/extra", lambda i: torch.zeros(len(i.logps) + 1),
     r"metric 'desirability/extra' must be a scalar or a per-example \[7\] or "
     r"desirable-example \[4\] .* or undesirable-example \[3\] .* tensor, got shape \[8\]"),
    (Listwise, "listwise/table", lambda i: i.logps.detach().reshape(7, 4),
     r"metric 'listwise/table' must be a scalar or a per-prompt \[7\] \(indexed by group "
     r"id\) or per-completion \[28\] tensor, got shape \[7, 4\]"),
    # rewards/rejected of a ranking is per prompt (its worst completions), not per completion.
    (Listwise, "rewards/rejected", lambda i: i.logps.detach(),
     r"metric 'rewards/rejected' must be a scalar or a per-prompt \[7\] .* tensor, got "
     r"shape \[28\]"),
    (Conditioned, "conditioned/table", lambda i: torch.zeros(len(i.logps), 2),
     r"metric 'conditioned/table' must be a scalar or a per-response \[7\] tensor, got "
     r"shape \[7, 2\]"),
    # No per-attribute [B, A] or [A] metrics: the module averages over every entry.
    (Regression, "regression/errors", lambda i: (i.predictions - i.targets).detach(),
     r"metric 'regression/errors' must be a scalar or a per-response \[7\] or order-given "
     r"\[4\] \(the responses giving order: values\[present\[:, 1\]\]\) tensor, got "
     r"shape \[7, 3\]"),
    (Regression, "regression/per_attribute", lambda i: torch.zeros(len(i.names)),
     r"metric 'regression/per_attribute' must be a scalar or .* got shape \[3\]"),
    # attributes/order/* is over the responses that give an order, not all of them.
    (Regression, "attributes/order/mae", lambda i: (i.predictions - i.targets).detach()[:, 1],
     r"metric 'attributes/order/mae' must be a scalar or a order-given \[4\] \(the responses "
     r"giving order: values\[present\[:, 1\]\]\) tensor, got shape \[7\]"),
])
def test_metric_of_the_wrong_shape(cls, key, value, message):
    class Shaped(cls):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = value(inputs)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Shaped)


# -- reference-free ---------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Margin, Desirability, Listwise, Conditioned])
def test_reference_free_that_reads_the_reference(cls):
    class Peeks(cls):
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


def test_reference_free_that_fails_on_reference_log_probs():
    class Refuses(Margin):
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


def test_attribute_metric_that_reads_absent_targets():
    class Peeks(Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["regression/mean_target"] = inputs.targets.mean()
            return out

    with pytest.raises(ConformanceError, match=r"'regression/mean_target' changes by "):
        run(Peeks)


# -- batch, listing and attribute order ------------------------------------------------------------

def test_loss_that_depends_on_batch_order():
    class Positional(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(0.5, 1.5, len(inputs.chosen))
            losses = torch.nn.functional.softplus(-(inputs.chosen - inputs.rejected))
            return LossOutput((weights * losses).mean(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the pairs "
                                               r"in the batch: it differs by [0-9.e+-]+"):
        run(Positional)


def test_per_pair_metric_not_permuted_with_the_pairs():
    class Indexed(Margin):
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


def test_metric_over_one_class_not_reordered_with_it():
    class Indexed(Desirability):
        def loss(self, inputs):
            out = super().loss(inputs)
            # The desirable examples' length, but not their values: a position in the class.
            out.metrics["desirability/position"] = torch.arange(int(inputs.labels.sum())).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'desirability/position' depends on "
                                               r"the order of the examples in the batch"):
        run(Indexed)


def test_per_prompt_metric_not_reordered_with_the_prompts():
    class Indexed(Listwise):
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


def test_per_response_metric_not_permuted_with_the_responses():
    class Indexed(Conditioned):
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


def test_metric_over_the_responses_giving_an_attribute_not_reordered_with_them():
    class Indexed(Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            # The length of the responses giving `order`, but a position among them.
            given = int(inputs.present[:, inputs.names.index("order")].sum())
            out.metrics["regression/order_position"] = torch.arange(given).float()
            return out

    with pytest.raises(ConformanceError, match=r"metric 'regression/order_position' depends on "
                                               r"the order of the responses in the batch"):
        run(Indexed)


def test_attribute_model_that_weighs_attributes_by_position():
    class FirstMatters(Regression):
        def loss(self, inputs):
            out = super().loss(inputs)
            weights = torch.linspace(2.0, 1.0, len(inputs.names))  # the first listed most
            squared = (inputs.predictions - inputs.targets) ** 2 * inputs.present * weights
            return LossOutput(squared.sum() / inputs.present.sum(), out.metrics)

    with pytest.raises(ConformanceError, match=r"the loss depends on the order of the "
                                               r"attributes in the schema .* names, not "
                                               r"positions, say which attribute"):
        run(FirstMatters)


def test_attribute_metric_that_assumes_the_schema_order():
    class Hardcoded(Regression):
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


def test_ranked_loss_that_depends_on_listing_order():
    class ListedFirstIsBest(Listwise):
        def ranks(self, inputs):
            return listing_positions(inputs.group)

    # Reordering whole prompts keeps each prompt's listing: only the listing check sees it.
    with pytest.raises(ConformanceError, match=r"the loss depends on the order in which each "
                                               r"prompt's completions are listed: it differs "
                                               r"by [0-9.e+-]+ .* ranks, not positions"):
        run(ListedFirstIsBest)


def test_per_completion_metric_that_stays_in_place():
    class Indexed(Listwise):
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


# -- declaration, entry point and config ------------------------------------------------

def test_declaration_checks():
    class Undescribed(Margin):
        pass

    Undescribed.__doc__ = None
    with pytest.raises(ConformanceError, match=r"neither `description` nor a docstring"):
        check_declaration(Undescribed)

    class Incomplete(Margin):
        """Config has a field without a default."""

        @dataclass
        class Config(ObjectiveConfig):
            beta: float = field(default=1.0)
            gamma: float = field(kw_only=True)

    with pytest.raises(ConformanceError, match=r"fields without a default: \['gamma'\]"):
        check_declaration(Incomplete)

    class Future(Margin):
        api_version = 2

    with pytest.raises(ConformanceError, match=r"api_version is 2, this prefopt speaks plugin "
                                               r"API version 1"):
        check_declaration(Future)


def test_entry_point_checks():
    with pytest.raises(ConformanceError, match=r"no objective 'margin' is installed: declare "
                                               r"`margin = \"<module>:Margin\"`"):
        check_entry_point(Margin, "margin")
    with pytest.raises(ConformanceError, match=r"prefopt==0\.1\.0 \(dpo = prefopt\.plugins\.dpo"
                                               r":DPO\) loads prefopt\.plugins\.dpo\.DPO, not "
                                               r"prefopt\.plugins\.ipo\.IPO"):
        check_entry_point(IPO, "dpo")


LISTY = """
    from dataclasses import dataclass, field
    from prefopt.objective import BatchFormat, LossOutput, Objective, ObjectiveConfig

    class Listy(Objective):
        '''An objective whose Config holds a list.'''

        batch_format = BatchFormat.PAIRWISE

        @dataclass
        class Config(ObjectiveConfig):
            weights: list[float] = field(default_factory=lambda: [1.0, 2.0])
            scale: float | None = None

        def loss(self, inputs):
            return LossOutput((inputs.chosen - inputs.rejected).mean())
"""


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(source) -> the class 'Listy' of `source`, declared as the objective 'listy'
    by a distribution on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(source):
        info = tmp_path / "listy-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: listy\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[prefopt.objectives]\nlisty = fakeplugin_listy:Listy\n")
        (tmp_path / "fakeplugin_listy.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        registry.clear_caches()
        return importlib.import_module("fakeplugin_listy").Listy

    yield make
    registry.clear_caches()
    sys.modules.pop("fakeplugin_listy", None)


def test_config_round_trip_needs_values_it_cannot_derive(install):
    listy = install(LISTY)
    with pytest.raises(ConformanceError, match=r"cannot derive an override for "
                                               r"Listy\.Config\.weights .* pass "
                                               r"values=\{'weights': <a value>\}"):
        check_config(listy, "listy")
    # An Optional[float] gets a float; a list comes from the author.
    assert check_config(listy, "listy", values={"weights": [0.5, 0.25, 4.0]}) == [
        "config round trip", "config unknown key", "config types"]
    with pytest.raises(ConformanceError, match=r"values= names fields that Listy\.Config "
                                               r"does not have: \['wieghts'\]"):
        check_config(listy, "listy", values={"weights": [1.0], "wieghts": [1.0]})


def test_config_that_does_not_compose(install):
    untyped = install(LISTY.replace("scale: float | None = None", "scale: object = None"))
    with pytest.raises(ConformanceError, match=r"`prefopt-train objective=listy ` does not "
                                               r"compose: .* its Config is not a valid Hydra "
                                               r"schema"):
        check_config(untyped, "listy", values={"weights": [1.0], "scale": 2.0})
