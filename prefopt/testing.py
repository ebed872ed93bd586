"""Conformance checks for objective plugins, to call from a plugin's own pytest suite.

    from prefopt.testing import check_objective
    from my_package import MyObjective

    def test_conformance():
        check_objective(MyObjective, name="mine")   # the entry-point name

A failed check raises `ConformanceError` (an AssertionError, so pytest reports a failed
assertion) that names the property and by how much it failed. What is checked:

- declaration: an `Objective` subclass of this plugin API version, with a `BatchFormat`,
  a Config dataclass deriving from `ObjectiveConfig` whose fields all have defaults, and a
  one-line description (`prefopt-plugins` shows it);
- entry point: `name` is installed in `prefopt.objectives` and loads this class;
- config: `prefopt-train`'s real config composes with `objective=<name>`, every field
  overridden on the command line, and converts back to the Config dataclass; an unknown
  key and a value of the wrong type are refused;
- loss and gradients, on the tiny model and a few synthetic records: the loss is a finite
  scalar and every policy parameter receives a finite gradient, not all zero;
- metric names: the shared `rewards/*` schema, or keys under `<name>/`; per-example or
  scalar tensors, finite and detached;
- declared properties: an objective that needs no reference model gives the same loss and
  metrics whatever reference log-probs it is handed; permuting the examples of a batch
  permutes the per-example metrics and leaves the loss unchanged.

Unpaired, ranked and reward-model objectives get the loss-and-gradient and metric-name
checks on exactly what `PreferenceModule.loss_inputs` hands them for a synthetic batch of
their format; the reference-free and batch-order checks are defined for pairwise
log-prob objectives. A format prefopt-train cannot feed is a ConformanceError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import math
import types
import typing
from dataclasses import dataclass

import torch

from prefopt import registry
from prefopt.objective import (API_VERSION, BatchFormat, LossOutput, Needs, Objective,
                               ObjectiveConfig, PairwiseLogps)

# Module-owned metrics: PreferenceModule logs these itself, an objective must not.
MODULE_METRICS = ("loss", "logps/chosen", "logps/rejected", "kl", "entropy")
# Implicit-reward metrics every pairwise objective reports (prefopt-train monitors
# rewards/accuracies to keep the best checkpoint).
PAIRWISE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                    "rewards/accuracies")
RTOL, ATOL = 1e-5, 1e-6
TENSOR_CHECKS = ("loss and gradients", "metric names", "reference-free", "batch order")


class ConformanceError(AssertionError):
    """An objective does not hold to the plugin contract."""


def check_objective(cls: type[Objective], name: str, *,
                    configs: list[ObjectiveConfig] | None = None,
                    values: dict[str, typing.Any] | None = None) -> list[str]:
    """Every check that applies to `cls`, installed as `name`; returns the checks that ran.

    `configs`: the configurations to run the tensor checks under (default: the defaults).
    `values`: override values for Config fields whose type the kit cannot derive one for.
    """
    check_declaration(cls)
    check_entry_point(cls, name)
    ran = ["declaration", "entry point", *check_config(cls, name, values)]
    for config in configs or [cls.Config()]:
        ran += check_loss(cls(dataclasses.replace(config, name=name)), name)
    return ran


# -- declaration and entry point --------------------------------------------------------

def check_declaration(cls: type[Objective]) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ConformanceError(f"{cls!r} is not a subclass of prefopt.objective.Objective")
    if getattr(cls, "api_version", None) != API_VERSION:
        raise ConformanceError(f"{cls.__name__}.api_version is {cls.api_version}, this "
                               f"prefopt speaks plugin API version {API_VERSION}")
    if not isinstance(getattr(cls, "batch_format", None), BatchFormat):
        raise ConformanceError(f"{cls.__name__}.batch_format must be a "
                               f"prefopt.objective.BatchFormat, got "
                               f"{getattr(cls, 'batch_format', None)!r}")
    config = cls.Config
    if not (dataclasses.is_dataclass(config) and issubclass(config, ObjectiveConfig)):
        raise ConformanceError(f"{cls.__name__}.Config must be a dataclass deriving from "
                               "prefopt.objective.ObjectiveConfig")
    required = [f.name for f in dataclasses.fields(config)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise ConformanceError(f"{cls.__name__}.Config fields without a default: {required}; "
                               "`objective=<name>` alone must give a complete config")
    if not (cls.description or (cls.__doc__ or "").strip()):
        raise ConformanceError(f"{cls.__name__} has neither `description` nor a docstring; "
                               "prefopt-plugins shows one of them")


def check_entry_point(cls: type[Objective], name: str) -> None:
    plugins = registry.discover()
    if name not in plugins:
        raise ConformanceError(
            f"no objective '{name}' is installed: declare `{name} = \"<module>:"
            f"{cls.__name__}\"` under [project.entry-points.\"{registry.ENTRY_POINT_GROUP}\"] "
            "in pyproject.toml and install the package (pip install -e .). Installed: "
            f"{', '.join(sorted(plugins))}")
    try:
        loaded = registry.load(name)
    except registry.PluginError as exc:
        raise ConformanceError(str(exc)) from exc
    if loaded is not cls:
        raise ConformanceError(f"the entry point {plugins[name].origin} loads "
                               f"{loaded.__module__}.{loaded.__qualname__}, not "
                               f"{cls.__module__}.{cls.__qualname__}")


# -- config round trip through Hydra ----------------------------------------------------

def _render(value) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a Hydra override")


def _optional_inner(tp):
    """T for Optional[T] / T | None, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _another_value(tp, default):
    """A valid value of type `tp` different from `default`, or raise LookupError."""
    inner = _optional_inner(tp)
    if inner is not None:
        return _another_value(inner, None if default is None else default)
    if tp is bool:
        return not default if default is not None else True
    if tp is int:
        return (default or 0) + 1
    if tp is float:
        return (default or 0.0) + 0.25
    if tp is str:
        return (default or "") + "_changed"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = [m for m in tp if m != default]
        if members:
            return members[0]
    raise LookupError


def _scalar_kind(tp):
    inner = _optional_inner(tp)
    return _scalar_kind(inner) if inner is not None else tp


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@contextlib.contextmanager
def _prefopt_train_config():
    """Hydra initialised on `prefopt-train`'s own config, with every installed objective."""
    from hydra import initialize_config_module

    from prefopt.config import register_schema

    register_schema()
    registry.register_configs()
    with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
        yield


def _objective_config(overrides) -> ObjectiveConfig:
    from hydra import compose
    from omegaconf import OmegaConf

    cfg = compose(config_name="train", overrides=list(overrides))
    return OmegaConf.to_object(cfg.objective)


def compose_objective(*overrides: str) -> ObjectiveConfig:
    """The objective config `prefopt-train <overrides>` runs with, e.g.
    `compose_objective("objective=my_preset")` to test a YAML preset."""
    with _prefopt_train_config():
        return _objective_config(overrides)


def check_config(cls: type[Objective], name: str,
                 values: dict[str, typing.Any] | None = None) -> list[str]:
    """The Config composes through `prefopt-train`'s real config and back."""
    from hydra.errors import HydraException

    values = dict(values or {})
    hints = typing.get_type_hints(cls.Config)
    fields = [f for f in dataclasses.fields(cls.Config) if f.init and f.name != "name"]
    expected = {}
    for field in fields:
        if field.name in values:
            expected[field.name] = values.pop(field.name)
            continue
        try:
            expected[field.name] = _another_value(hints[field.name], _default(field))
        except LookupError:
            raise ConformanceError(
                f"cannot derive an override for {cls.Config.__qualname__}.{field.name} "
                f"(type {hints[field.name]}): pass values={{'{field.name}': <a value>}}"
                ) from None
    if values:
        raise ConformanceError(f"values= names fields that {cls.Config.__qualname__} does "
                               f"not have: {sorted(values)}")
    selected = f"{registry.CONFIG_GROUP}={name}"
    ran = []
    with _prefopt_train_config():
        def objective_config(*overrides, expect_failure=False):
            try:
                return _objective_config([selected, *overrides])
            except HydraException as exc:
                if expect_failure:
                    raise
                raise ConformanceError(f"`prefopt-train {selected} {' '.join(overrides)}` "
                                       f"does not compose: {exc} {exc.__cause__ or ''}"
                                       ) from exc

        got = objective_config()
        if got != cls.Config(name=name):
            raise ConformanceError(f"`{selected}` composes to {got!r}, not the defaults "
                                   f"{cls.Config(name=name)!r}")
        overrides = [f"objective.{k}={_render(v)}" for k, v in expected.items()]
        got = objective_config(*overrides)
        if not isinstance(got, cls.Config):
            raise ConformanceError(f"the composed objective config converts to "
                                   f"{type(got).__qualname__}, not {cls.Config.__qualname__}")
        wrong = {k: (getattr(got, k), v) for k, v in expected.items()
                 if _plain(getattr(got, k)) != _plain(v)}
        if wrong:
            raise ConformanceError("overrides did not survive the round trip through Hydra "
                                   "(field: got, expected): " + str(wrong))
        ran.append("config round trip")

        key = "not_a_field_of_this_config"
        try:
            objective_config(f"objective.{key}=1", expect_failure=True)
        except HydraException as exc:
            if key not in f"{exc} {exc.__cause__}":
                raise ConformanceError(f"an unknown key was refused, but the message does "
                                       f"not name it: {exc}") from exc
        else:
            raise ConformanceError(f"`objective.{key}=1` was accepted: the Config must be "
                                   "a structured schema that refuses unknown keys")
        ran.append("config unknown key")

        typed = [f.name for f in fields if _scalar_kind(hints[f.name]) in (int, float, bool)]
        if typed:
            try:
                objective_config(f"objective.{typed[0]}='not a number'", expect_failure=True)
            except HydraException:
                ran.append("config types")
            else:
                raise ConformanceError(f"`objective.{typed[0]}='not a number'` was accepted: "
                                       f"the field's type ({hints[typed[0]]}) is not checked")
    return ran


# -- tensor checks on the tiny model ----------------------------------------------------

@dataclass
class PairwiseCase:
    """A few synthetic pairs through the tiny model: what the module would hand `loss`."""

    policy: torch.nn.Module
    inputs: PairwiseLogps  # policy log-probs carry gradients; reference ones do not
    reference_chosen: torch.Tensor  # the reference log-probs, even when not needed
    reference_rejected: torch.Tensor


@functools.cache
def _pairwise_batch(n_pairs: int, seed: int):
    """The tiny tokenizer and one batch of synthetic pairs, through the real data path."""
    from prefopt.data.datamodule import DataConfig, PreferenceDataModule
    from prefopt.data.synthetic import SyntheticConfig
    from prefopt.models import ModelConfig, build_tokenizer

    tokenizer = build_tokenizer(ModelConfig())
    data = DataConfig(batch_size=n_pairs, shuffle=False,
                      synthetic=SyntheticConfig(n_train=n_pairs, n_val=1, seed=seed))
    datamodule = PreferenceDataModule(data, tokenizer, fmt=BatchFormat.PAIRWISE.value,
                                      seed=seed)
    datamodule.setup("fit")
    return tokenizer, next(iter(datamodule.train_dataloader()))


def _initial_policy(tokenizer, seed: int):
    from prefopt.models import ModelConfig, build_policy

    torch.manual_seed(seed)
    return build_policy(ModelConfig(), tokenizer)


_ROW_KEYS = ("input_ids", "attention_mask", "completion_mask")


@functools.cache
def _reference_logps(n_pairs: int, seed: int) -> torch.Tensor:
    """Log-probs under the reference (the unperturbed policy); the same on every call."""
    from prefopt.logprobs import completion_logps

    tokenizer, batch = _pairwise_batch(n_pairs, seed)
    with torch.no_grad():
        return completion_logps(_initial_policy(tokenizer, seed),
                                {k: batch[k] for k in _ROW_KEYS}, impl="torch").logps


def pairwise_case(needs: Needs, n_pairs: int = 6, seed: int = 0) -> PairwiseCase:
    from prefopt.logprobs import completion_logps

    tokenizer, batch = _pairwise_batch(n_pairs, seed)
    ref = _reference_logps(n_pairs, seed)
    policy = _initial_policy(tokenizer, seed)
    # Move the policy off its reference: at π = π_ref every reference-relative reward is
    # 0, the pairs are indistinguishable and a permutation or reference check sees nothing.
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = completion_logps(policy, {k: batch[k] for k in _ROW_KEYS}, impl="torch",
                           entropy_grad=needs.entropy, token_level=needs.token_logps)
    c, r = batch["slot"] == 0, batch["slot"] == 1
    inputs = PairwiseLogps(chosen=out.logps[c], rejected=out.logps[r],
                           chosen_tokens=out.tokens[c], rejected_tokens=out.tokens[r],
                           ref_chosen=ref[c] if needs.reference else None,
                           ref_rejected=ref[r] if needs.reference else None)
    return PairwiseCase(policy, inputs, ref[c], ref[r])


FED_FORMATS = (BatchFormat.PAIRWISE, BatchFormat.UNPAIRED, BatchFormat.RANKED)


def check_loss(objective: Objective, name: str) -> list[str]:
    """The tensor checks (see the module docstring); returns those that ran."""
    needs = objective.needs()
    if not isinstance(needs, Needs):
        raise ConformanceError(f"{type(objective).__name__}.needs() returned {needs!r}, "
                               "not a prefopt.objective.Needs")
    if objective.batch_format not in FED_FORMATS:
        raise ConformanceError(f"objective '{name}' consumes {objective.batch_format.value} "
                               "records, which prefopt-train cannot feed yet (it feeds "
                               f"{', '.join(f.value for f in FED_FORMATS)})")
    if objective.batch_format != BatchFormat.PAIRWISE or needs.reward_model:
        return _check_through_module(objective, name)
    case = pairwise_case(needs)
    out = objective.loss(case.inputs)
    _check_loss_and_gradients(out, case.policy)
    _check_metric_names(out, name, n=len(case.inputs.chosen))
    ran = ["loss and gradients", "metric names"]
    detached = _detached(case.inputs)
    if not needs.reference:
        _check_reference_free(objective, detached, case)
        ran.append("reference-free")
    _check_batch_order(objective, detached)
    ran.append("batch order")
    return ran


def _check_through_module(objective: Objective, name: str, n: int = 6, seed: int = 0
                          ) -> list[str]:
    """Unpaired, ranked and reward-model objectives: the loss and metrics on exactly what
    PreferenceModule.loss_inputs hands them for a synthetic batch of their format. The
    reference-free and batch-order checks are defined for pairwise log-prob inputs only."""
    from prefopt.data.datamodule import DataConfig, PreferenceDataModule
    from prefopt.data.synthetic import SyntheticConfig
    from prefopt.models import ModelConfig, build_policy, build_tokenizer, make_reference
    from prefopt.module import OptimizerConfig, PreferenceModule, SchedulerConfig

    needs = objective.needs()
    tokenizer = build_tokenizer(ModelConfig())
    data = DataConfig(batch_size=n, shuffle=False,
                      synthetic=SyntheticConfig(n_train=n, n_val=2, seed=seed))
    datamodule = PreferenceDataModule(data, tokenizer, fmt=objective.batch_format.value,
                                      mismatched=needs.mismatched_pairs, seed=seed)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(seed)
    policy = build_policy(ModelConfig(), tokenizer, reward_head=needs.reward_model)
    reference = make_reference(policy) if needs.reference else None
    with torch.no_grad():  # off the reference, so reference-relative rewards are not all 0
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module = PreferenceModule(policy, reference, objective, OptimizerConfig(),
                              SchedulerConfig(), logprob_impl="torch")
    inputs, _ = module.loss_inputs(batch)
    out = objective.loss(inputs)
    _check_loss_and_gradients(out, policy)
    _check_general_metric_names(out, name)
    return ["loss and gradients", "metric names"]


def _check_names(out: LossOutput, name: str) -> set[str]:
    """Metric names are the shared schema's or under `<name>/`, never the module's own."""
    keys = set(out.metrics)
    owned = sorted(keys & set(MODULE_METRICS))
    if owned:
        raise ConformanceError(f"metrics {owned} are logged by the training module itself; "
                               f"put objective-specific values under '{name}/'")
    stray = sorted(k for k in keys - set(PAIRWISE_METRICS) if not k.startswith(f"{name}/"))
    if stray:
        raise ConformanceError(f"metric names {stray} are neither in the shared schema "
                               f"{list(PAIRWISE_METRICS)} nor under '{name}/'")
    return keys


def _check_general_metric_names(out: LossOutput, name: str) -> None:
    """Schema names or `<name>/...`, `rewards/accuracies` present (prefopt-train keeps the
    checkpoint with the best val/rewards/accuracies), values detached, finite, at most 1-D
    (per example, per prompt, or a subset such as the desirable examples)."""
    keys = _check_names(out, name)
    if "rewards/accuracies" not in keys:
        raise ConformanceError("every objective reports 'rewards/accuracies': prefopt-train "
                               "keeps the checkpoint with the best val/rewards/accuracies")
    for key, value in out.metrics.items():
        if not isinstance(value, torch.Tensor) or value.ndim > 1:
            raise ConformanceError(f"metric '{key}' must be a scalar or 1-D tensor, got "
                                   f"{getattr(value, 'shape', type(value))}")
        if value.requires_grad:
            raise ConformanceError(f"metric '{key}' carries a gradient: detach it, or it "
                                   "keeps the whole graph alive until it is logged")
        if not torch.isfinite(value).all():
            raise ConformanceError(f"metric '{key}' is not finite: {value}")


def _check_loss_and_gradients(out: LossOutput, policy: torch.nn.Module) -> None:
    if not isinstance(out, LossOutput):
        raise ConformanceError(f"loss() returned {type(out).__name__}, not a LossOutput")
    loss = out.loss
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
        raise ConformanceError(f"LossOutput.loss must be a scalar tensor, got "
                               f"{getattr(loss, 'shape', type(loss))}")
    if not torch.isfinite(loss):
        raise ConformanceError(f"the loss is not finite on the tiny model: {loss.item()}")
    if not loss.requires_grad:
        raise ConformanceError("the loss does not depend on the policy's log-probs "
                               "(it carries no gradient)")
    loss.backward()
    named = list(policy.named_parameters())
    missing = [n for n, p in named if p.grad is None]
    if missing:
        raise ConformanceError(f"no gradient reached {len(missing)} of {len(named)} policy "
                               f"parameters, e.g. {missing[:3]}")
    bad = [n for n, p in named if not torch.isfinite(p.grad).all()]
    if bad:
        raise ConformanceError(f"non-finite gradients in {len(bad)} policy parameters, "
                               f"e.g. {bad[:3]}")
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for _, p in named))
    if norm == 0.0:
        raise ConformanceError("every policy gradient is exactly zero")


def _check_metric_names(out: LossOutput, name: str, n: int) -> None:
    keys = _check_names(out, name)
    absent = [k for k in PAIRWISE_METRICS if k not in keys]
    if absent:
        raise ConformanceError(f"pairwise objectives report {list(PAIRWISE_METRICS)} "
                               f"(prefopt.objective.preference_metrics); missing {absent}")
    for key, value in out.metrics.items():
        if not isinstance(value, torch.Tensor) or value.shape not in ((), (n,)):
            raise ConformanceError(f"metric '{key}' must be a scalar or per-pair [{n}] "
                                   f"tensor, got {getattr(value, 'shape', type(value))}")
        if value.requires_grad:
            raise ConformanceError(f"metric '{key}' carries a gradient: detach it, or it "
                                   "keeps the whole graph alive until it is logged")
        if not torch.isfinite(value).all():
            raise ConformanceError(f"metric '{key}' is not finite: {value}")


def _detached(inputs: PairwiseLogps) -> PairwiseLogps:
    return PairwiseLogps(**{f.name: None if getattr(inputs, f.name) is None
                            else getattr(inputs, f.name).detach()
                            for f in dataclasses.fields(inputs)})


def _differences(a: LossOutput, b: LossOutput, permutation=None) -> list[tuple[str, float]]:
    """(quantity, largest absolute difference) for the loss and every metric that differ
    beyond tolerance; per-pair values of `a` are permuted first when given a permutation."""
    found = []
    keys = ["loss", *a.metrics, *(k for k in b.metrics if k not in a.metrics)]
    for key in keys:
        x = a.loss if key == "loss" else a.metrics.get(key)
        y = b.loss if key == "loss" else b.metrics.get(key)
        if x is None or y is None or x.shape != y.shape:
            found.append((key, math.inf))
            continue
        x, y = x.detach().double(), y.detach().double()
        if permutation is not None and x.ndim == 1:
            x = x[permutation]
        if not torch.allclose(x, y, rtol=RTOL, atol=ATOL):
            found.append((key, float((x - y).abs().max())))
    return found


def _check_reference_free(objective: Objective, inputs: PairwiseLogps,
                          case: PairwiseCase) -> None:
    base = objective.loss(inputs)  # what PreferenceModule passes: no reference at all
    generator = torch.Generator().manual_seed(1)
    for label, chosen, rejected in [
            ("the reference model's log-probs", case.reference_chosen, case.reference_rejected),
            ("perturbed reference log-probs",
             case.reference_chosen + 3.0 * torch.randn(case.reference_chosen.shape,
                                                       generator=generator),
             case.reference_rejected - 3.0 * torch.randn(case.reference_rejected.shape,
                                                         generator=generator))]:
        given = dataclasses.replace(inputs, ref_chosen=chosen, ref_rejected=rejected)
        try:
            out = objective.loss(given)
        except Exception as exc:
            raise ConformanceError(f"needs().reference is False, but loss() fails when "
                                   f"handed {label}: {type(exc).__name__}: {exc}") from exc
        for key, diff in _differences(base, out)[:1]:
            raise ConformanceError(f"needs().reference is False, but '{key}' changes by "
                                   f"{diff:.3g} when the objective is handed {label} "
                                   "instead of none: it uses the reference")


def _check_batch_order(objective: Objective, inputs: PairwiseLogps) -> None:
    n = len(inputs.chosen)
    if n < 2:
        raise ConformanceError("the synthetic batch has fewer than two pairs")
    # Reverse then rotate by one: no pair keeps its place, so any positional effect shows.
    permutation = torch.arange(n).flip(0).roll(1)
    permuted = PairwiseLogps(**{f.name: None if getattr(inputs, f.name) is None
                                else getattr(inputs, f.name)[permutation]
                                for f in dataclasses.fields(inputs)})
    base, out = objective.loss(inputs), objective.loss(permuted)
    for key, diff in _differences(base, out, permutation)[:1]:
        what = "the loss" if key == "loss" else f"metric '{key}'"
        raise ConformanceError(f"{what} depends on the order of the pairs in the batch: it "
                               f"differs by {diff:.3g} after a permutation (tolerance "
                               f"rtol={RTOL}, atol={ATOL}); per-pair metrics must be "
                               "permuted with the pairs, the loss unchanged")
