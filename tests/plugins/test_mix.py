"""Mix: the weighted sum equals the parts run alone (gradients included), needs are their
union, every refusal names the override to fix, the kit passes, third-party parts mix, and
the built-in `rpo` preset is RPO's formula and trains."""

import csv
import importlib
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from prefopt import registry
from prefopt.objective import PairwiseLogps, UnknownSettingError, UnpairedLogps
from prefopt.plugins.dpo import DPO
from prefopt.plugins.mix import Mix, MixError
from prefopt.plugins.sft import SFT
from prefopt.testing import check_objective


def mix(*parts, weights=None, **settings):
    return Mix(Mix.Config(name="mix", parts=list(parts),
                          weights=list(weights or [1.0] * len(parts)), settings=settings))


def leaf_pairs(n=6, seed=0):
    """Pairwise inputs whose policy log-probs are leaves with a gradient (float64)."""
    gen = torch.Generator().manual_seed(seed)
    values = {k: -torch.rand(n, generator=gen, dtype=torch.float64) * 20
              for k in ("chosen", "rejected", "ref_chosen", "ref_rejected")}
    tokens = {k: torch.randint(0, 9, (n,), generator=gen).double()
              for k in ("chosen_tokens", "rejected_tokens")}
    tokens["chosen_tokens"][0] = 0  # an empty completion: SFT's guard is part of the sum
    chosen = values["chosen"].requires_grad_()
    rejected = values["rejected"].requires_grad_()
    return PairwiseLogps(chosen=chosen, rejected=rejected, ref_chosen=values["ref_chosen"],
                         ref_rejected=values["ref_rejected"], **tokens)


def grads(loss, inputs):
    return torch.autograd.grad(loss, [inputs.chosen, inputs.rejected])


def test_weighted_sum_equals_the_parts_alone_with_gradients():
    inputs = leaf_pairs()
    out = mix("dpo", "sft", weights=[1.0, 0.2], dpo={"beta": 0.2}).loss(inputs)
    dpo = DPO(DPO.Config(name="dpo", beta=0.2)).loss(inputs).loss
    sft = SFT(SFT.Config(name="sft")).loss(inputs).loss
    expected = 1.0 * dpo + 0.2 * sft
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    for got, want in zip(grads(out.loss, inputs), grads(expected, inputs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # Not trivially equal to either part: both weights count.
    assert abs(out.loss.item() - dpo.item()) > 1e-3 and abs(out.loss.item() - sft.item()) > 1e-3


def test_metrics_per_part_and_the_shared_schema_from_the_first_part():
    inputs = leaf_pairs()
    out = mix("dpo", "sft", weights=[1.0, 0.2], dpo={"beta": 0.2}).loss(inputs)
    dpo = DPO(DPO.Config(name="dpo", beta=0.2)).loss(inputs)
    sft = SFT(SFT.Config(name="sft")).loss(inputs)
    assert out.metrics["mix/dpo/loss"].item() == pytest.approx(dpo.loss.item())
    assert out.metrics["mix/sft/loss"].item() == pytest.approx(sft.loss.item())
    torch.testing.assert_close(out.metrics["mix/sft/sft/nll_per_token"],
                               sft.metrics["sft/nll_per_token"])
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        torch.testing.assert_close(out.metrics[key], dpo.metrics[key])  # β-scaled log-ratios
        torch.testing.assert_close(out.metrics[f"mix/sft/{key}"], sft.metrics[key])
    assert "sft/nll_per_token" not in out.metrics  # a part's own metric stays under mix/
    # Listed first, SFT's reference-free rewards (log π) become the shared ones.
    swapped = mix("sft", "dpo", weights=[0.2, 1.0], dpo={"beta": 0.2}).loss(inputs)
    torch.testing.assert_close(swapped.metrics["rewards/margins"],
                               sft.metrics["rewards/margins"])
    assert swapped.loss.item() == pytest.approx(out.loss.item())


def test_monitor_is_the_first_parts():
    assert mix("dpo", "sft").monitor == ("rewards/accuracies", "max")
    assert mix("sft", "dpo").monitor == ("mix/sft/loss", "min")  # SFT monitors its loss


def test_zero_weight_part_is_logged_but_not_trained():
    inputs = leaf_pairs()
    out = mix("dpo", "sft", weights=[1.0, 0.0]).loss(inputs)
    dpo = DPO(DPO.Config(name="dpo")).loss(inputs).loss
    assert out.loss.item() == pytest.approx(dpo.item())
    assert "mix/sft/loss" in out.metrics


@pytest.mark.parametrize("parts,settings,expected", [
    (["dpo", "sft"], {}, {"reference": True}),
    (["sft", "orpo"], {}, {"reference": False}),
    (["sft", "dpo"], {"dpo": {"reference_free": True}}, {"reference": False}),
    (["kto", "bco"], {}, {"reference": True, "mismatched_pairs": True}),
    (["reward_bt", "reward_bt_twin"], {}, {"reward_model": True, "reference": False}),
])
def test_needs_are_the_union(parts, settings, expected, monkeypatch):
    if "reward_bt_twin" in parts:  # two reward-model parts: a second name for RewardBT
        real = registry.load
        monkeypatch.setattr(registry, "load",
                            lambda name: real("reward_bt" if name == "reward_bt_twin" else name))
    needs = mix(*parts, **settings).needs()
    for field, value in expected.items():
        assert getattr(needs, field) == value, field


def test_a_part_sees_only_what_it_asked_for():
    inputs = leaf_pairs()
    seen = {}

    class Spy(SFT):
        def loss(self, inputs):
            seen["ref"] = inputs.ref_chosen
            return super().loss(inputs)

    combined = mix("dpo", "sft")
    combined.parts["sft"] = Spy(SFT.Config(name="sft"))
    combined.loss(inputs)
    assert seen["ref"] is None  # DPO needs the reference; SFT did not ask for it
    assert inputs.ref_chosen is not None  # the shared inputs are not changed


@pytest.mark.parametrize("config,error,message", [
    ({"parts": [], "weights": []}, ValueError, r"objective\.parts is empty"),
    ({"parts": ["dpo", "sft"], "weights": [1.0]}, ValueError,
     r"objective\.weights has 1 value\(s\) for 2 part\(s\) \(dpo, sft\)"),
    ({"parts": ["dpo"], "weights": [-0.5]}, ValueError, r"the weight of 'dpo' is -0\.5"),
    ({"parts": ["dpo", "dpo"], "weights": [1.0, 1.0]}, ValueError,
     r"lists 'dpo' 2 times: list it once and add its weights"),
    ({"parts": ["mix"], "weights": [1.0]}, MixError, r"'mix' is the mix itself"),
    ({"parts": ["dpo", "ppo"], "weights": [1.0, 1.0]}, MixError,
     r"'ppo' is an online objective"),
    ({"parts": ["dpo", "kto"], "weights": [1.0, 1.0]}, MixError,
     r"'dpo' consumes pairwise records and 'kto' unpaired records"),
    ({"parts": ["reward_bt", "dpo"], "weights": [1.0, 1.0]}, MixError,
     r"'reward_bt' trains a reward model .* and 'dpo' a policy"),
    ({"parts": ["dpo", "dpoo"], "weights": [1.0, 1.0]}, MixError,
     r"objective\.parts: unknown objective 'dpoo'\. Available objectives: .*\bsft\b.*"
     r"Did you mean 'dpo'\?"),
    ({"parts": ["dpo", "rpo"], "weights": [1.0, 1.0]}, MixError,
     r"unknown objective 'rpo'.* 'rpo' is a preset"),
    ({"settings": {"dpo": {"betaa": 1.0}}}, UnknownSettingError,
     r"objective\.settings\.dpo\.betaa: objective 'dpo' has no setting 'betaa' \(its "
     r"settings: beta, label_smoothing, length_normalize, reference_free\)\. Did you mean "
     r"objective\.settings\.dpo\.beta\?"),
    ({"settings": {"dpo": {"beta": "high"}}}, ValueError,
     r"objective\.settings\.dpo\.beta='high': .*could not be converted to Float"),
    ({"settings": {"dpo": {"beta": -1.0}}}, ValueError,
     r"part 'dpo': objective\.settings\.dpo\.beta must be > 0"),
    ({"settings": {"sft": {"average": "sequence"}}}, ValueError,
     r"objective\.settings\.sft: 'sft' is not one of objective\.parts \(dpo\)"),
    ({"settings": {"dpo": 0.2}}, ValueError, r"objective\.settings\.dpo must map"),
])
def test_refusals_name_what_to_fix(config, error, message):
    with pytest.raises(error, match=message):
        Mix(Mix.Config(name="mix", **config))


def test_different_value_models_are_refused(monkeypatch):
    from prefopt.objective import Needs, ValueModel

    class Shared(SFT):
        def needs(self):
            return Needs(reference=False, value_model=ValueModel.shared)

    class Separate(SFT):
        def needs(self):
            return Needs(reference=False, value_model=ValueModel.separate)

    classes = {"shared_part": Shared, "separate_part": Separate}
    monkeypatch.setattr(registry, "load", lambda name: classes[name])
    with pytest.raises(MixError, match=r"'shared_part' asks for a shared value model and "
                                       r"'separate_part' for a separate one"):
        mix("shared_part", "separate_part")


def test_unpaired_parts_mix():
    gen = torch.Generator().manual_seed(1)
    logps = (-torch.rand(8, generator=gen, dtype=torch.float64) * 10).requires_grad_()
    inputs = UnpairedLogps(logps=logps, tokens=torch.full((8,), 4.0, dtype=torch.float64),
                           labels=torch.tensor([True, False] * 4),
                           ref_logps=-torch.rand(8, generator=gen, dtype=torch.float64) * 10,
                           kl_ratio=torch.tensor(0.3, dtype=torch.float64))
    out = mix("kto", "bco", weights=[0.5, 2.0]).loss(inputs)
    kto_cls, bco_cls = registry.load("kto"), registry.load("bco")
    kto = kto_cls(kto_cls.Config(name="kto")).loss(inputs).loss
    bco = bco_cls(bco_cls.Config(name="bco")).loss(inputs).loss
    assert out.loss.item() == pytest.approx((0.5 * kto + 2.0 * bco).item(), abs=1e-6)
    assert "rewards/accuracies" in out.metrics


def test_a_part_breaking_the_contract_is_named():
    class PerPair(SFT):
        def loss(self, inputs):
            out = super().loss(inputs)
            out.loss = -inputs.chosen  # [B], not a scalar
            return out

    combined = mix("dpo", "sft")
    combined.parts["sft"] = PerPair(SFT.Config(name="sft"))
    with pytest.raises(MixError, match=r"objective 'mix', part 'sft': LossOutput\.loss must "
                                       r"be a scalar tensor, got shape \[6\]"):
        combined.loss(leaf_pairs())


def test_parts_state_travels_with_the_mix():
    combined = mix("kto", "bco")  # BCO keeps a running reward mean; KTO keeps nothing
    state = {"bco": {"reward_mean": 0.75, "reward_count": 3}}
    combined.load_state_dict(state)
    assert combined.state_dict() == state
    assert combined.parts["bco"].reward_mean.mean == 0.75


@pytest.mark.slow
def test_conforms_to_the_plugin_contract():
    ran = check_objective(Mix, "mix", configs=[
        Mix.Config(parts=["dpo", "sft"], weights=[1.0, 0.2], settings={"dpo": {"beta": 0.2}}),
        Mix.Config(parts=["sft", "orpo"], weights=[1.0, 0.5])],
        values={"parts": ["dpo", "sft"], "weights": [1.0, 0.2],
                "settings": {"dpo": {"beta": 0.2}}})
    assert "config round trip" in ran
    assert ran.count("reference-free") == 1  # sft + orpo: no part needs a reference


def test_settings_compose_without_a_plus(compose):
    cfg = compose("objective=mix", "objective.parts=[dpo,sft]", "objective.weights=[1.0,0.2]",
                  "objective.settings.dpo.beta=0.2")
    config = OmegaConf.to_object(cfg.objective)
    assert (config.parts, config.weights, config.settings) == (
        ["dpo", "sft"], [1.0, 0.2], {"dpo": {"beta": 0.2}})
    assert registry.build(config).parts["dpo"].config.beta == 0.2


# -- the rpo preset ----------------------------------------------------------------------

def test_rpo_preset_is_rpos_formula(compose):
    config = OmegaConf.to_object(compose("objective=rpo").objective)
    assert (config.name, config.parts, config.weights) == ("mix", ["dpo", "sft"], [1.0, 1.0])
    objective = registry.build(config)
    inputs = leaf_pairs()
    inputs.chosen_tokens[0] = 3  # RPO's normaliser |y_w| is never 0 on real data
    # Pang et al. 2024: L = -log σ(β[(log π/π_ref)(y_w) - (log π/π_ref)(y_l)])
    #                       - α log π(y_w|x) / |y_w|, averaged over pairs; β = 0.1, α = 1.
    h = 0.1 * ((inputs.chosen - inputs.ref_chosen) - (inputs.rejected - inputs.ref_rejected))
    expected = (-F.logsigmoid(h) - 1.0 * inputs.chosen / inputs.chosen_tokens).mean()
    got = objective.loss(inputs).loss
    assert got.item() == pytest.approx(expected.item(), abs=1e-9)
    for a, b in zip(grads(got, inputs), grads(expected, inputs)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    alpha = OmegaConf.to_object(compose("objective=rpo", "objective.weights=[1.0,0.5]",
                                        "objective.settings.dpo.beta=0.3").objective)
    assert alpha.weights == [1.0, 0.5] and alpha.settings["dpo"] == {"beta": 0.3}


@pytest.mark.slow
def test_rpo_preset_trains_two_steps(compose, fast_overrides, tmp_path):
    from prefopt.training.train import train

    result = train(compose("objective=rpo", *fast_overrides, "export_policy=false"))
    assert result["end"]["val/loss"] == result["end"]["val/loss"]  # not NaN
    with open(tmp_path / "run" / "metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    for stage in ("train", "val"):
        assert {f"{stage}/{m}" for m in ("loss", "rewards/accuracies", "mix/dpo/loss",
                                         "mix/sft/loss", "mix/sft/sft/nll_per_token")} <= columns


# -- a third-party part ------------------------------------------------------------------

HINGE = """
    from dataclasses import dataclass
    from prefopt.objective import (BatchFormat, LossOutput, Needs, Objective, ObjectiveConfig,
                                   preference_metrics)

    class Hinge(Objective):
        batch_format = BatchFormat.PAIRWISE
        description = "hinge on margins"

        @dataclass
        class Config(ObjectiveConfig):
            margin: float = 1.0

        def needs(self):
            return Needs(reference=False)

        def loss(self, inputs):
            losses = (self.config.margin - (inputs.chosen - inputs.rejected)).clamp(min=0)
            metrics = preference_metrics(inputs.chosen, inputs.rejected)
            metrics["hinge/active"] = (losses > 0).float()
            return LossOutput(losses.mean(), metrics)
"""


@pytest.fixture
def third_party_hinge(tmp_path, monkeypatch):
    """An objective `hinge` declared by a distribution on sys.path (not installed)."""
    info = tmp_path / "hinge_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hinge-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nhinge = fakeplugin_mixhinge:Hinge\n")
    (tmp_path / "fakeplugin_mixhinge.py").write_text(textwrap.dedent(HINGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry.clear_caches()
    yield
    registry.clear_caches()
    sys.modules.pop("fakeplugin_mixhinge", None)


def test_a_third_party_part_mixes(third_party_hinge):
    inputs = leaf_pairs()
    out = mix("dpo", "hinge", weights=[1.0, 0.5], hinge={"margin": 3.0}).loss(inputs)
    margins = inputs.chosen - inputs.rejected
    dpo = DPO(DPO.Config(name="dpo")).loss(inputs).loss
    expected = dpo + 0.5 * (3.0 - margins).clamp(min=0).mean()
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-9)
    for a, b in zip(grads(out.loss, inputs), grads(expected, inputs)):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
    assert "mix/hinge/hinge/active" in out.metrics
    with pytest.raises(UnknownSettingError, match=r"objective\.settings\.hinge\.margn: "
                                                  r"objective 'hinge' has no setting"):
        mix("dpo", "hinge", hinge={"margn": 3.0})
