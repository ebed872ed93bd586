"""The metric checks (prefopt.testing.metrics): names, required metrics, monitor, and
each value's layout."""

import pytest
import torch

from prefopt.objective import LossOutput, Objective
from prefopt.plugins.kto import KTO
from prefopt.testing import ConformanceError, check_loss


@pytest.mark.parametrize("key,message", [
    ("margin_gap", r"metric names \['margin_gap'\] are neither in the shared schema"),
    ("dpo/gap", r"metric names \['dpo/gap'\] are neither .* nor under 'margin/'"),
    ("rewards/gap", r"metric names \['rewards/gap'\] are neither in the shared schema"),
    ("kl", r"metrics \['kl'\] are logged by the training module itself"),
])
def test_metric_names_follow_the_schema(key, message, toys, run):
    class Named(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = torch.tensor(0.0)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Named)


@pytest.mark.parametrize("toy,key,message", [
    # Attributed records hold no preferences: no rewards/* for either kind of objective.
    ("Conditioned", "rewards/accuracies", r"metric names \['rewards/accuracies'\] are neither "
                                          r"in the shared schema \(none for attributed records"),
    ("Regression", "rewards/chosen", r"metric names \['rewards/chosen'\] are neither in the "
                                     r"shared schema attributes/<attribute>/\{mae,accuracy\} "
                                     r"for the attributes \['quality', 'order', 'length'\] nor "
                                     r"under 'regression/'"),
    # attributes/* names the schema's attributes, with the shared metrics only ...
    ("Regression", "attributes/helpfulness/mae", r"metric names \['attributes/helpfulness/mae'\]"
                                                 r" are neither in the shared schema"),
    ("Regression", "attributes/quality/rmse", r"metric names \['attributes/quality/rmse'\] are "
                                              r"neither in the shared schema"),
    # ... and is an attribute model's: a log-prob objective has no predictions to score.
    ("Conditioned", "attributes/quality/mae", r"metric names \['attributes/quality/mae'\] are "
                                              r"neither in the shared schema"),
    ("Conditioned", "logps/response", r"metrics \['logps/response'\] are logged by the training "
                                      r"module itself"),
], indirect=["toy"])
def test_attributed_metric_names_follow_the_schema(toy, key, message, run):
    class Named(toy):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = torch.tensor(0.0)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Named)


@pytest.mark.parametrize("toy", ["Conditioned", "Regression"], indirect=True)
def test_attributed_objectives_need_no_metric(toy, run):
    class Bare(toy):
        monitor = ("loss", "min")

        def loss(self, inputs):
            return LossOutput(super().loss(inputs).loss)

    assert "metric names" in run(Bare)


@pytest.mark.parametrize("toy,monitor,message", [
    # The default, rewards/accuracies, is never logged for attributed records.
    ("Conditioned", Objective.monitor, r"Monitored\.monitor names 'rewards/accuracies', which is "
                                       r"not logged for attributed batches .* prefopt-train keeps "
                                       r"the checkpoint with the best val/rewards/accuracies"),
    ("Regression", ("val/loss", "min"), r"names 'val/loss', which is not logged .*\(without "
                                        r"the val/ prefix\)"),
    # A reward model has no log-probs: the module logs no entropy for it.
    ("Regression", ("entropy", "min"), r"names 'entropy', which is not logged for attributed "
                                       r"batches \(the objective reports \[.*\], the training "
                                       r"module \['loss'\]\)"),
    ("Conditioned", ("loss", "lowest"), r"Monitored\.monitor must be \(metric, 'min' or 'max'\), "
                                        r"got \('loss', 'lowest'\)"),
], indirect=["toy"])
def test_monitor_names_a_logged_metric(toy, monitor, message, run):
    class Monitored(toy):
        pass

    Monitored.monitor = monitor
    with pytest.raises(ConformanceError, match=message):
        run(Monitored)


def test_monitor_may_name_a_module_metric(toys, run):
    class Monitored(toys.Conditioned):
        monitor = ("logps/response", "max")

    assert "metric names" in run(Monitored)


def test_missing_reward_metrics(toys, run):
    class Quiet(toys.Margin):
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


def test_unpaired_objective_needs_only_accuracies(toys, run):
    # A batch may lack a class, and with it chosen / rejected rewards and margins.
    class AccuracyOnly(toys.Desirability):
        def loss(self, inputs):
            out = super().loss(inputs)
            return LossOutput(out.loss, {"rewards/accuracies": out.metrics["rewards/accuracies"]})

    assert "metric names" in run(AccuracyOnly)


def test_metric_that_keeps_the_graph(toys, run):
    class Attached(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/raw"] = inputs.chosen - inputs.rejected
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/raw' carries a gradient"):
        run(Attached)


def test_non_finite_metric(toys, run):
    class Undefined(toys.Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/ratio"] = torch.zeros(len(inputs.chosen)) / 0.0
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/ratio' is not finite"):
        run(Undefined)


@pytest.mark.parametrize("toy,key,value,message", [
    ("Margin", "margin/table", lambda i: torch.zeros(len(i.chosen), 2),
     r"metric 'margin/table' must be a scalar or a per-pair \[7\] tensor, got shape \[7, 2\]"),
    # rewards/chosen of an unpaired objective covers the desirable examples only.
    ("Desirability", "rewards/chosen", lambda i: i.logps.detach(),
     r"metric 'rewards/chosen' must be a scalar or a desirable-example \[4\] "
     r"\(values\[labels\]\) tensor, got shape \[7\]"),
    ("Desirability", "desirability/extra", lambda i: torch.zeros(len(i.logps) + 1),
     r"metric 'desirability/extra' must be a scalar or a per-example \[7\] or "
     r"desirable-example \[4\] .* or undesirable-example \[3\] .* tensor, got shape \[8\]"),
    ("Listwise", "listwise/table", lambda i: i.logps.detach().reshape(7, 4),
     r"metric 'listwise/table' must be a scalar or a per-prompt \[7\] \(indexed by group "
     r"id\) or per-completion \[28\] tensor, got shape \[7, 4\]"),
    # rewards/rejected of a ranking is per prompt (its worst completions), not per completion.
    ("Listwise", "rewards/rejected", lambda i: i.logps.detach(),
     r"metric 'rewards/rejected' must be a scalar or a per-prompt \[7\] .* tensor, got "
     r"shape \[28\]"),
    ("Conditioned", "conditioned/table", lambda i: torch.zeros(len(i.logps), 2),
     r"metric 'conditioned/table' must be a scalar or a per-response \[7\] tensor, got "
     r"shape \[7, 2\]"),
    # No per-attribute [B, A] or [A] metrics: the module averages over every entry.
    ("Regression", "regression/errors", lambda i: (i.predictions - i.targets).detach(),
     r"metric 'regression/errors' must be a scalar or a per-response \[7\] or order-given "
     r"\[4\] \(the responses giving order: values\[present\[:, 1\]\]\) tensor, got "
     r"shape \[7, 3\]"),
    ("Regression", "regression/per_attribute", lambda i: torch.zeros(len(i.names)),
     r"metric 'regression/per_attribute' must be a scalar or .* got shape \[3\]"),
    # attributes/order/* is over the responses that give an order, not all of them.
    ("Regression", "attributes/order/mae", lambda i: (i.predictions - i.targets).detach()[:, 1],
     r"metric 'attributes/order/mae' must be a scalar or a order-given \[4\] \(the responses "
     r"giving order: values\[present\[:, 1\]\]\) tensor, got shape \[7\]"),
], indirect=["toy"])
def test_metric_of_the_wrong_shape(toy, key, value, message, run):
    class Shaped(toy):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics[key] = value(inputs)
            return out

    with pytest.raises(ConformanceError, match=message):
        run(Shaped)


def test_ranked_accuracies_may_leave_out_prompts_without_an_ordered_pair():
    """kwise's accuracies skip a prompt whose completions tie ([G'] in group order): a
    layout of the format, and one that the batch-order check moves with the prompts."""
    from prefopt.objective import RankedLogps
    from prefopt.plugins.kwise import KWise
    from prefopt.testing.invariance import _check_order, _reorderings
    from prefopt.testing.metrics import _check_metrics, _layouts_of

    # 4 prompts: 0 and 2 ranked, 1 tied (ranks 1, 1), 3 ranked.
    ranks = torch.tensor([1, 2, 3, 1, 1, 2, 1, 1, 2, 3])
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    logps = -torch.arange(1.0, 11.0)
    inputs = RankedLogps(logps, torch.ones(10), ranks, group, logps.flip(0))
    assert _layouts_of(inputs)["ordered-prompt"].tolist() == [0, 2, 3]
    objective = KWise(KWise.Config(name="kwise"))
    out = objective.loss(inputs)
    assert out.metrics["rewards/accuracies"].shape == (3,)
    _check_metrics(out, "kwise", inputs, objective)
    for reordering in _reorderings(inputs):
        _check_order(objective, inputs, reordering)
