"""The conformance kit: the built-ins pass it, and each kind of violation is caught."""

import importlib
import sys
import textwrap
from dataclasses import dataclass, field

import pytest
import torch

from prefopt import registry
from prefopt.objective import (BatchFormat, LossOutput, Needs, Objective, ObjectiveConfig,
                               preference_metrics)
from prefopt.plugins.dpo import DPO
from prefopt.plugins.ipo import IPO
from prefopt.testing import (ConformanceError, check_config, check_declaration,
                             check_entry_point, check_loss, check_objective)


def test_dpo_conforms_in_every_mode():
    ran = check_objective(DPO, "dpo", configs=[
        DPO.Config(),
        DPO.Config(reference_free=True, length_normalize=True, label_smoothing=0.1)])
    assert ran.count("reference-free") == 1  # only the reference-free configuration
    assert {"entry point", "config round trip", "config unknown key", "config types",
            "loss and gradients", "metric names", "batch order"} <= set(ran)


def test_ipo_conforms():
    assert "batch order" in check_objective(IPO, "ipo")


class Margin(Objective):
    """A correct reference-free objective; the broken ones below change one thing."""

    batch_format = BatchFormat.PAIRWISE

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


def run(cls):
    return check_loss(cls(cls.Config(name="margin")), "margin")


def test_the_base_case_passes():
    assert run(Margin) == ["loss and gradients", "metric names", "reference-free",
                           "batch order"]


def test_reference_free_that_reads_the_reference():
    class Peeks(Margin):
        def rewards(self, inputs):
            if inputs.ref_chosen is None:
                return inputs.chosen, inputs.rejected
            return inputs.chosen - inputs.ref_chosen, inputs.rejected - inputs.ref_rejected

    with pytest.raises(ConformanceError, match=r"needs\(\)\.reference is False, but 'loss' "
                                               r"changes by [0-9.e+-]+ when the objective is "
                                               r"handed the reference model's log-probs"):
        run(Peeks)


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


@pytest.mark.parametrize("key,message", [
    ("margin_gap", r"metric names \['margin_gap'\] are neither in the shared schema"),
    ("dpo/gap", r"metric names \['dpo/gap'\] are neither .* nor under 'margin/'"),
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


def test_missing_reward_metrics():
    class Quiet(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            del out.metrics["rewards/accuracies"]
            return out

    with pytest.raises(ConformanceError, match=r"missing \['rewards/accuracies'\]"):
        run(Quiet)


def test_metric_that_keeps_the_graph():
    class Attached(Margin):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.metrics["margin/raw"] = inputs.chosen - inputs.rejected
            return out

    with pytest.raises(ConformanceError, match=r"metric 'margin/raw' carries a gradient"):
        run(Attached)


def test_loss_without_gradient():
    class Detached(Margin):
        def rewards(self, inputs):
            return inputs.chosen.detach(), inputs.rejected.detach()

    with pytest.raises(ConformanceError, match=r"carries no gradient"):
        run(Detached)


def test_non_finite_loss():
    class Exploding(Margin):
        def rewards(self, inputs):
            return inputs.chosen * float("inf"), inputs.rejected

    with pytest.raises(ConformanceError, match=r"the loss is not finite on the tiny model"):
        run(Exploding)


@pytest.mark.parametrize("name", ["kto", "kwise", "reward_bt", "reward_pl"])
def test_builtins_of_every_format_conform(registered, name):
    from prefopt import registry

    ran = check_objective(registry.load(name), name)
    assert {"loss and gradients", "metric names"} <= set(ran)
    assert "batch order" not in ran  # defined for pairwise log-prob objectives only


def test_unpaired_objective_without_accuracies_fails(registered):
    from prefopt.plugins.kto import KTO

    class NoAccuracy(KTO):
        def loss(self, inputs):
            out = super().loss(inputs)
            del out.metrics["rewards/accuracies"]
            return out

    with pytest.raises(ConformanceError, match=r"every objective reports 'rewards/accuracies'"):
        check_loss(NoAccuracy(NoAccuracy.Config(name="kto")), "kto")


def test_formats_prefopt_train_cannot_feed():
    class Attributed(Margin):
        batch_format = BatchFormat.ATTRIBUTED

    with pytest.raises(ConformanceError, match=r"consumes attributed records, which "
                                               r"prefopt-train cannot feed yet"):
        run(Attributed)


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
