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
  key and a value of the wrong type are refused.

The tensor checks run on exactly what `PreferenceModule.loss_inputs` hands the objective
for one batch of 7 synthetic records of its format (pairs, unpaired examples with both
labels, prompts with 4 ranked completions each, or attributed responses, some lacking a
value), built by the real data path, on the built-in tiny model moved off its reference
(or the tiny reward model: a scalar head, or for attributed records one output per
attribute of the synthetic schema, quality, order and length, fed the records without
their attribute line, as prefopt-train feeds an attribute model):

- feedable: an online objective (prompts: not covered by the kit), a reward model on
  unpaired records, or mismatched pairs without a reference is a failure;
- loss and gradients: the loss is a finite scalar with a gradient, and every policy (or
  reward-model) parameter receives a finite gradient, not all of them zero;
- metric names: the shared schema of the format or keys under `<name>/`, never the
  module's own (`loss`, `logps/*`, `kl`, `entropy`). The shared schema is `rewards/*` for
  pairwise, unpaired and ranked records; attributed records have no preferences, hence no
  rewards: an attribute model (AttributeScores) shares `attributes/<attribute>/mae` and
  `attributes/<attribute>/accuracy` for the attributes of the schema (`inputs.names`), in
  the attribute's units, and an objective on their log-probs (ResponseLogps) shares none.
  Values are detached, finite tensors, each a scalar or 1-D in one layout of its format:
    pairwise (log-probs or scores): per pair [B];
    unpaired: per example [B], or over one class in batch order: the desirable examples
      [n_D] (`values[labels]`) or the undesirable ones [n_U] (`values[~labels]`);
    ranked (log-probs or scores): per prompt [G] (indexed by group id) or per completion
      [M];
    attributed, log-probs: per response [B];
    attributed, attribute model: per response [B], or over the responses that give one
      attribute a, in batch order [n_a] (`values[present[:, a]]`); there are no
      per-attribute [A] or [B, A] metrics (the module averages a metric over its entries;
      log one `attributes/<attribute>/...` or `<name>/...` key per attribute instead);
  `rewards/chosen` and `rewards/rejected` take the per-pair, per-prompt or their class's
  layout, `attributes/<a>/*` the layout of the responses giving a (per response when
  every response gives it). Required: all four `rewards/*` for pairwise and ranked
  objectives, `rewards/accuracies` for unpaired ones (a batch may lack a class, and with
  it chosen or rejected rewards and margins); nothing for attributed ones, whose records
  hold no preference to be accurate about: a finite scalar loss is all prefopt-train
  needs. Whatever the format, the objective's `monitor` is (metric, "min" or "max") and
  names a metric logged for the batch, the objective's own or the module's (`loss`,
  `entropy`, `logps/*`, `kl` with a reference): prefopt-train keeps the checkpoint with
  the best val/<metric>, so the default, rewards/accuracies, does not do for attributed
  objectives (SteerLM and the attribute model monitor ("loss", "min"));
- reference-free: an objective on log-probs declaring `needs().reference` False gives the
  same loss and metrics when its inputs carry the reference model's log-probs, or
  perturbed ones, instead of None. Reward models have no reference: the list of checks
  that ran says the check does not apply;
- absent values (attribute models): `targets` is arbitrary where `present` is False (a
  record that lacks a value is masked out, not read as 0): other values there, in and
  out of [0, 1], leave the loss and metrics unchanged;
- batch order: reordering the examples of the inputs leaves the loss unchanged and
  reorders the metrics with them (entry by entry, in the layouts above). Unpaired inputs
  keep `kl_ratio` fixed: prefopt-train estimates it from the batch as collated, so
  re-collating in another order may legitimately change it. Ranked inputs reorder whole
  prompts (group ids relabelled, rows moved with their prompt). Attributed inputs
  reorder responses (an attribute model's predictions, targets and present rows
  together; `scale` and `names` are per attribute and stay);
- listing order (ranked): listing each prompt's completions in another order, same
  groups and ranks, leaves the loss and the per-prompt metrics unchanged;
- attribute order (attribute models): permuting the attributes of the schema (the
  columns of predictions, targets and present, with names and scale) leaves the loss and
  metrics unchanged: names, not positions, say which attribute a column is (a user's
  data.attributes lists them in any order).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import functools
import math
import types
import typing
from dataclasses import dataclass

import torch

from prefopt import registry
from prefopt.objective import (API_VERSION, AttributeScores, BatchFormat, LossOutput, Needs,
                               Objective, ObjectiveConfig, PairwiseLogps, PairwiseScores,
                               RankedLogps, RankedScores, ResponseLogps, UnpairedLogps)

# The formats prefopt-train feeds: a mirror of prefopt.train.FED_FORMATS (importing
# prefopt.train here would load Lightning and Hydra with the kit; a test keeps the two equal).
FED_FORMATS = (BatchFormat.PAIRWISE, BatchFormat.UNPAIRED, BatchFormat.RANKED,
               BatchFormat.ATTRIBUTED)
RTOL, ATOL = 1e-5, 1e-6
# Names of the tensor checks, as check_objective returns them when they run.
TENSOR_CHECKS = ("loss and gradients", "metric names", "reference-free", "absent values",
                 "batch order", "listing order", "attribute order")


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

# Records per synthetic batch: pairs, unpaired examples, ranked prompts or attributed
# responses. Odd, so that an unpaired batch never holds as many desirable as undesirable
# examples: the length of a metric over one class then says which class it covers.
N_RECORDS = 7
# Both classes present, 2+ examples each; attributed records: quality and length given by
# all 7, order by 4 (so some values are absent); checked in _layouts_of and
# _check_absent_values.
DATA_SEED = 1
MODEL_SEED = 0


@dataclass
class _Case:
    """One synthetic batch as `PreferenceModule.loss_inputs` hands it to the objective."""

    model: torch.nn.Module  # the policy or reward model under training
    batch: dict[str, torch.Tensor]  # the collated batch the inputs come from
    # PairwiseLogps | UnpairedLogps | RankedLogps | ResponseLogps, or PairwiseScores |
    # RankedScores | AttributeScores for reward models
    inputs: object


def check_loss(objective: Objective, name: str) -> list[str]:
    """The tensor checks (see the module docstring); returns those that ran."""
    needs = objective.needs()
    if not isinstance(needs, Needs):
        raise ConformanceError(f"{type(objective).__name__}.needs() returned {needs!r}, "
                               "not a prefopt.objective.Needs")
    _check_feedable(objective, needs, name)
    case = _case(objective)
    out = objective.loss(case.inputs)
    _check_loss_and_gradients(out, case.model, case.inputs)
    inputs = _detached(case.inputs)
    _check_metrics(out, name, inputs, objective)
    ran = ["loss and gradients", "metric names"]
    ran += _check_reference_free(objective, inputs, case.batch)
    ran += _check_absent_values(objective, inputs)
    for reordering in _reorderings(inputs):
        _check_order(objective, inputs, reordering)
        ran.append(reordering.check)
    return ran


def _check_feedable(objective: Objective, needs: Needs, name: str) -> None:
    """What prefopt-train cannot hand the objective is a failure, not a skipped check."""
    fmt = objective.batch_format
    if fmt == BatchFormat.PROMPTS:
        raise ConformanceError(f"objective '{name}' consumes prompts: an online objective, "
                               "which this kit does not cover (it checks losses on recorded "
                               "records); test its advantages and loss against hand values, "
                               "as prefopt's tests/plugins/test_ppo.py does")
    if fmt not in FED_FORMATS:
        raise ConformanceError(f"objective '{name}' consumes {fmt.value} records, which "
                               "prefopt-train cannot feed yet (it feeds "
                               f"{', '.join(f.value for f in FED_FORMATS)})")
    if needs.reward_model and fmt == BatchFormat.UNPAIRED:
        raise ConformanceError(f"objective '{name}' trains a reward model on unpaired records, "
                               "which prefopt-train cannot feed yet: reward models get "
                               "PairwiseScores, RankedScores or AttributeScores")
    if needs.mismatched_pairs and not needs.reference:
        raise ConformanceError(f"objective '{name}' declares needs().mismatched_pairs without "
                               "needs().reference: kl_ratio is a mean of log π/π_ref, which "
                               "prefopt-train cannot compute without a reference model")


# -- the synthetic case, through the real data and module path --------------------------

@functools.cache
def _tokenizer():
    from prefopt.models import ModelConfig, build_tokenizer

    return build_tokenizer(ModelConfig())


def _data_config():
    from prefopt.data.datamodule import DataConfig
    from prefopt.data.synthetic import SyntheticConfig

    return DataConfig(batch_size=N_RECORDS, shuffle=False,
                      synthetic=SyntheticConfig(n_train=N_RECORDS, n_val=2, seed=DATA_SEED))


@functools.cache
def _schema():
    """The attribute schema of the synthetic attributed records, as prefopt-train derives
    it (prefopt.data.datamodule.attribute_schema)."""
    from prefopt.data.datamodule import attribute_schema

    return attribute_schema(_data_config())


@functools.cache
def _cached_batch(fmt: str, mismatched: bool, condition: bool = True
                  ) -> dict[str, torch.Tensor]:
    """The first batch of N_RECORDS synthetic records of `fmt`, as prefopt-train collates
    it (with the mismatched KL rows when asked for; attributed records with their
    attribute line in the prompt unless `condition` is False, as for an attribute model)."""
    from prefopt.data.datamodule import PreferenceDataModule

    datamodule = PreferenceDataModule(_data_config(), _tokenizer(), fmt=fmt,
                                      mismatched=mismatched, seed=DATA_SEED, condition=condition)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def _batch(fmt: str, mismatched: bool, condition: bool = True) -> dict[str, torch.Tensor]:
    # A copy: the module hands some tensors (labels, margins) to the objective as they are,
    # and an objective that wrote into them must not change the batch of later checks.
    return {k: v.clone() for k, v in _cached_batch(fmt, mismatched, condition).items()}


@functools.cache
def _models(reward_head: bool, num_labels: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(reference, policy): the tiny model as built, frozen, and a copy moved off it;
    with `reward_head`, a reward model with `num_labels` outputs (one per attribute for an
    attribute model).

    At π = π_ref every reference-relative reward is 0: the examples would be
    indistinguishable and a permutation or reference check would see nothing. Seeded inside
    fork_rng, so the caller's random state is left as it was."""
    from prefopt.models import ModelConfig, build_policy, make_reference

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        policy = build_policy(ModelConfig(), _tokenizer(), reward_head=reward_head,
                              num_labels=num_labels)
        reference = make_reference(policy)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return reference, policy


def _module(policy, reference, objective: Objective):
    from prefopt.training.module import PreferenceModule
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    # prefopt-train hands the module the schema of attributed records (prefopt.train.build).
    schema = _schema() if objective.batch_format == BatchFormat.ATTRIBUTED else None
    # The reference log-prob implementation: the same numbers on every device and dtype.
    return PreferenceModule(policy, reference, objective, OptimizerConfig(), SchedulerConfig(),
                            logprob_impl="torch", schema=schema)


def _case(objective: Objective) -> _Case:
    """The kit's batch of the objective's format, through a PreferenceModule set up as
    prefopt-train sets it up for this objective (a reference model only if it needs one;
    an attribute model with one output per attribute, on records without their attribute
    line)."""
    needs = objective.needs()
    attributed = objective.batch_format == BatchFormat.ATTRIBUTED
    num_labels = len(_schema()) if attributed and needs.reward_model else 1
    reference, template = _models(reward_head=needs.reward_model, num_labels=num_labels)
    policy = copy.deepcopy(template)  # a fresh copy: the gradient check fills in .grad
    batch = _batch(objective.batch_format.value, needs.mismatched_pairs,
                   condition=not needs.reward_model)
    module = _module(policy, reference if needs.reference else None, objective)
    inputs, _ = module.loss_inputs(batch)
    return _Case(policy, batch, inputs)


def _tensors(inputs) -> dict[str, torch.Tensor]:
    return {f.name: getattr(inputs, f.name) for f in dataclasses.fields(inputs)
            if isinstance(getattr(inputs, f.name), torch.Tensor)}


def _detached(inputs):
    return dataclasses.replace(inputs, **{k: v.detach() for k, v in _tensors(inputs).items()})


# Fields with a leading dimension that is not the rows': AttributeScores.scale [A].
PER_ATTRIBUTE_FIELDS = {AttributeScores: ("scale",)}
# The attribute axis of each AttributeScores tensor, for the attribute-order check.
ATTRIBUTE_AXES = {"predictions": 1, "targets": 1, "present": 1, "scale": 0}


def _row_tensors(inputs) -> dict[str, torch.Tensor]:
    """The per-row input fields: every one with a leading dimension (per pair, example,
    completion or response) but an attribute model's per-attribute `scale`. 0-dim ones
    (kl_ratio) are per batch."""
    per_attribute = PER_ATTRIBUTE_FIELDS.get(type(inputs), ())
    return {k: v for k, v in _tensors(inputs).items() if v.ndim >= 1 and k not in per_attribute}


def _row_count(inputs) -> int:
    return len(next(iter(_row_tensors(inputs).values())))


def _prompt_count(inputs) -> int:
    group = getattr(inputs, "group", None)
    return int(group.max()) + 1 if group is not None else _row_count(inputs)


# -- loss and gradients -----------------------------------------------------------------

def _check_loss_and_gradients(out: LossOutput, model: torch.nn.Module, inputs) -> None:
    """A finite scalar loss whose backward reaches every parameter with finite values.

    Every parameter of the tiny causal LM and of the tiny reward model (scalar or one
    output per attribute) takes part in the forward (AutoModelForSequenceClassification
    puts its score head where the LM head was and leaves no parameter unused), so each one
    must get a gradient: there is nothing to exempt."""
    owner, outputs = ("policy", "log-probs")
    if isinstance(inputs, (PairwiseScores, RankedScores)):
        owner, outputs = ("reward model", "scores")
    elif isinstance(inputs, AttributeScores):
        owner, outputs = ("reward model", "attribute predictions")
    if not isinstance(out, LossOutput):
        raise ConformanceError(f"loss() returned {type(out).__name__}, not a LossOutput")
    loss = out.loss
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
        raise ConformanceError(f"LossOutput.loss must be a scalar tensor, got "
                               f"{getattr(loss, 'shape', type(loss))}")
    if not torch.isfinite(loss):
        raise ConformanceError(f"the loss is not finite on the tiny model: {loss.item()}")
    if not loss.requires_grad:
        raise ConformanceError(f"the loss carries no gradient: it does not depend on the "
                               f"{owner}'s {outputs}")
    loss.backward()
    named = list(model.named_parameters())
    missing = [n for n, p in named if p.grad is None]
    if missing:
        raise ConformanceError(f"no gradient reached {len(missing)} of {len(named)} {owner} "
                               f"parameters, e.g. {missing[:3]}")
    bad = [n for n, p in named if not torch.isfinite(p.grad).all()]
    if bad:
        raise ConformanceError(f"non-finite gradients in {len(bad)} of {len(named)} {owner} "
                               f"parameters, e.g. {bad[:3]}")
    if not any(bool(p.grad.any()) for _, p in named):
        raise ConformanceError(f"every {owner} gradient is exactly zero")


# -- metrics ----------------------------------------------------------------------------

# Module-owned metrics: PreferenceModule logs these itself, an objective must not.
MODULE_METRICS = ("loss", "logps/chosen", "logps/rejected", "logps/response", "kl", "entropy")
# The shared implicit-reward schema of pairwise, unpaired and ranked records.
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                  "rewards/accuracies")
# The shared schema of attribute models: `attributes/<attribute>/<metric>` for each
# attribute of the schema, in the attribute's units (mean absolute error, and the share of
# predictions that round to the value).
ATTRIBUTE_METRICS = ("mae", "accuracy")
# What each format must report. An unpaired batch may lack a class, and then has no
# chosen or rejected rewards and no margin; accuracies are always defined, and
# prefopt-train keeps the checkpoint with the best val/rewards/accuracies. Attributed
# records hold no preference: a finite scalar loss is all that is required of them.
REQUIRED_METRICS = {BatchFormat.PAIRWISE: REWARD_METRICS,
                    BatchFormat.UNPAIRED: ("rewards/accuracies",),
                    BatchFormat.RANKED: REWARD_METRICS,
                    BatchFormat.ATTRIBUTED: ()}
_HELPERS = {BatchFormat.PAIRWISE: " (prefopt.objective.preference_metrics computes them)",
            BatchFormat.RANKED: " (prefopt.plugins.kwise.ranking_metrics computes them)"}
# rewards/chosen and rewards/rejected describe one side of the preferences: per pair, per
# prompt (its best or worst completions) or over one class of unpaired examples; never
# over every example or completion.
SIDE_LAYOUTS = {"rewards/chosen": ("per-pair", "per-prompt", "desirable-example"),
                "rewards/rejected": ("per-pair", "per-prompt", "undesirable-example")}
_LAYOUT_HINTS = {"desirable-example": " (values[labels])",
                 "undesirable-example": " (values[~labels])",
                 "per-prompt": " (indexed by group id)"}
MONITOR_MODES = ("min", "max")


def _given(attribute: str) -> str:
    """The layout of the responses that give `attribute` (values[present[:, a]])."""
    return f"{attribute}-given"


def _layouts(inputs, rows: torch.Tensor, prompts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 1-D metric layouts of `inputs`' format, each as the item every entry stands for.

    `rows` names the original row (pair, example, completion or response) in each row of
    `inputs`, `prompts` the original prompt behind each group id: arange() for the batch
    as built, carried along by a reordering, so that metrics can be compared entry by
    entry."""
    if isinstance(inputs, (PairwiseLogps, PairwiseScores)):
        return {"per-pair": rows}
    if isinstance(inputs, UnpairedLogps):
        # Values over one class in batch order, as values[labels] / values[~labels] give.
        return {"per-example": rows, "desirable-example": rows[inputs.labels],
                "undesirable-example": rows[~inputs.labels]}
    if isinstance(inputs, ResponseLogps):
        return {"per-response": rows}
    if isinstance(inputs, AttributeScores):
        # Values over the responses that give an attribute, in batch order, as
        # values[present[:, a]] gives; one that every response gives is per response.
        layouts = {"per-response": rows}
        for a, attribute in enumerate(inputs.names):
            if not bool(inputs.present[:, a].all()):
                layouts[_given(attribute)] = rows[inputs.present[:, a]]
        return layouts
    return {"per-prompt": prompts, "per-completion": rows}


def _layouts_of(inputs) -> dict[str, torch.Tensor]:
    """The layouts of the batch as built; their lengths must differ, or a metric's length
    would not say which layout it follows."""
    layouts = _layouts(inputs, torch.arange(_row_count(inputs)),
                       torch.arange(_prompt_count(inputs)))
    lengths = [len(ids) for ids in layouts.values()]
    if len(set(lengths)) != len(lengths) or min(lengths) < 2:
        raise RuntimeError(f"prefopt.testing: the synthetic batch has metric layouts of "
                           f"lengths {dict(zip(layouts, lengths))}; they must be distinct "
                           "and at least 2 (change N_RECORDS or DATA_SEED)")
    return layouts


def _layout_hints(inputs) -> dict[str, str]:
    """What each layout's entries are, for messages."""
    hints = dict(_LAYOUT_HINTS)
    if isinstance(inputs, AttributeScores):
        for a, attribute in enumerate(inputs.names):
            hints[_given(attribute)] = f" (the responses giving {attribute}: " \
                f"values[present[:, {a}]])"
    return hints


def _allowed_layouts(key: str, layouts: dict[str, torch.Tensor], inputs
                     ) -> dict[str, torch.Tensor]:
    """The layouts metric `key` may take (its name passed _check_names)."""
    if key in SIDE_LAYOUTS:
        return {k: v for k, v in layouts.items() if k in SIDE_LAYOUTS[key]}
    if isinstance(inputs, AttributeScores) and key.startswith("attributes/"):
        layout = _given(key.split("/")[1])
        layout = layout if layout in layouts else "per-response"  # given by every response
        return {layout: layouts[layout]}
    return layouts


def _check_metrics(out: LossOutput, name: str, inputs, objective: Objective) -> None:
    fmt = objective.batch_format
    keys = _check_names(out, name, inputs)
    _check_required(keys, fmt)
    _check_monitor(objective, keys)
    layouts = _layouts_of(inputs)
    hints = _layout_hints(inputs)
    for key, value in out.metrics.items():
        _check_metric_value(key, value, _allowed_layouts(key, layouts, inputs), hints)


def _shared_metrics(inputs) -> tuple[tuple[str, ...], str]:
    """The shared metric names for these inputs, and how a message shows them."""
    if isinstance(inputs, ResponseLogps):
        return (), "(none for attributed records: they hold no preferences, hence no rewards)"
    if isinstance(inputs, AttributeScores):
        names = tuple(f"attributes/{a}/{m}" for a in inputs.names for m in ATTRIBUTE_METRICS)
        return names, (f"attributes/<attribute>/{{{','.join(ATTRIBUTE_METRICS)}}} for the "
                       f"attributes {list(inputs.names)}")
    return REWARD_METRICS, str(list(REWARD_METRICS))


def _check_names(out: LossOutput, name: str, inputs) -> set[str]:
    """Metric names are the shared schema's or under `<name>/`, never the module's own."""
    keys = set(out.metrics)
    owned = sorted(keys & set(MODULE_METRICS))
    if owned:
        raise ConformanceError(f"metrics {owned} are logged by the training module itself; "
                               f"put objective-specific values under '{name}/'")
    shared, shown = _shared_metrics(inputs)
    stray = sorted(k for k in keys - set(shared) if not k.startswith(f"{name}/"))
    if stray:
        raise ConformanceError(f"metric names {stray} are neither in the shared schema "
                               f"{shown} nor under '{name}/'")
    return keys


def _check_required(keys: set[str], fmt: BatchFormat) -> None:
    required = REQUIRED_METRICS[fmt]
    absent = [k for k in required if k not in keys]
    if absent:
        why = "; prefopt-train keeps the checkpoint with the best val/rewards/accuracies" \
            if "rewards/accuracies" in absent else ""
        raise ConformanceError(f"{fmt.value} objectives report {list(required)}"
                               f"{_HELPERS.get(fmt, '')}; missing {absent}{why}")


def _module_metrics(needs: Needs, fmt: BatchFormat) -> tuple[str, ...]:
    """What PreferenceModule logs itself for an objective with these needs."""
    if needs.reward_model:
        return ("loss",)
    logps = ("logps/response",) if fmt == BatchFormat.ATTRIBUTED \
        else ("logps/chosen", "logps/rejected")
    return ("loss", *logps, "entropy", *(("kl",) if needs.reference else ()))


def _check_monitor(objective: Objective, keys: set[str]) -> None:
    """`monitor` names a metric logged for the batch: prefopt-train's checkpoint callback
    fails at the first validation on one that is never logged."""
    cls = type(objective).__name__
    monitor = objective.monitor
    if not (isinstance(monitor, (tuple, list)) and len(monitor) == 2 and isinstance(monitor[0], str)
            and monitor[1] in MONITOR_MODES):
        raise ConformanceError(f"{cls}.monitor must be (metric, 'min' or 'max'), got "
                               f"{monitor!r}")
    metric, fmt = monitor[0], objective.batch_format
    module = _module_metrics(objective.needs(), fmt)
    if metric not in keys | set(module):
        raise ConformanceError(
            f"{cls}.monitor names '{metric}', which is not logged for {fmt.value} batches "
            f"(the objective reports {sorted(keys)}, the training module {list(module)}); "
            f"prefopt-train keeps the checkpoint with the best val/{metric}: report it, or "
            "set `monitor` to a metric that is logged (without the val/ prefix), e.g. "
            "('loss', 'min')")


def _check_metric_value(key: str, value, allowed: dict[str, torch.Tensor],
                        hints: dict[str, str]) -> None:
    """A detached, finite scalar or 1-D tensor in one of the `allowed` layouts."""
    if not isinstance(value, torch.Tensor):
        raise ConformanceError(f"metric '{key}' must be a tensor, got {type(value).__name__}")
    if value.ndim != 0 and not any(value.shape == (len(ids),) for ids in allowed.values()):
        options = " or ".join(f"{layout} [{len(ids)}]{hints.get(layout, '')}"
                              for layout, ids in allowed.items())
        raise ConformanceError(f"metric '{key}' must be a scalar or a {options} tensor, got "
                               f"shape {list(value.shape)}")
    if value.requires_grad:
        raise ConformanceError(f"metric '{key}' carries a gradient: detach it, or it keeps "
                               "the whole graph alive until it is logged")
    if not torch.isfinite(value).all():
        raise ConformanceError(f"metric '{key}' is not finite: {value}")


def _differences(a: LossOutput, b: LossOutput, alignment: dict[int, torch.Tensor]
                 ) -> list[tuple[str, float]]:
    """(quantity, largest absolute difference) for the loss and every metric that differ
    beyond tolerance. A 1-D metric of `a` is first taken in the order `alignment` gives
    for its length (its layout's): entry k of `b` should be entry alignment[k] of `a`."""
    found = []
    keys = ["loss", *a.metrics, *(k for k in b.metrics if k not in a.metrics)]
    for key in keys:
        x = a.loss if key == "loss" else a.metrics.get(key)
        y = b.loss if key == "loss" else b.metrics.get(key)
        if x is None or y is None or x.shape != y.shape:
            found.append((key, math.inf))
            continue
        x, y = x.detach().double(), y.detach().double()
        if x.ndim == 1 and len(x) in alignment:
            x = x[alignment[len(x)]]
        if not torch.allclose(x, y, rtol=RTOL, atol=ATOL):
            found.append((key, float((x - y).abs().max())))
    return found


# -- reference-free ---------------------------------------------------------------------

REFERENCE_FREE_NOT_APPLICABLE = "reference-free: not applicable (reward models score " \
    "without a reference)"
# The policy field each reference field mirrors, per log-prob input type.
REFERENCE_FIELDS = {PairwiseLogps: {"ref_chosen": "chosen", "ref_rejected": "rejected"},
                    UnpairedLogps: {"ref_logps": "logps"},
                    RankedLogps: {"ref_logps": "logps"},
                    ResponseLogps: {"ref_logps": "logps"}}


def _check_reference_free(objective: Objective, inputs, batch) -> list[str]:
    """An objective declaring needs().reference False must ignore any reference log-probs
    it is handed. Returns the check's name, or says why it does not apply."""
    needs = objective.needs()
    if needs.reward_model:
        return [REFERENCE_FREE_NOT_APPLICABLE]
    if needs.reference:
        return []  # it uses the reference: there is no property to check
    reference = _reference_logps(objective, batch)
    generator = torch.Generator().manual_seed(1)
    perturbed = {k: v + 3.0 * torch.randn(v.shape, generator=generator)
                 for k, v in reference.items()}
    base = objective.loss(inputs)  # what PreferenceModule passes: no reference at all
    for label, given in [("the reference model's log-probs", reference),
                         ("perturbed reference log-probs", perturbed)]:
        try:
            out = objective.loss(dataclasses.replace(inputs, **given))
        except Exception as exc:
            raise ConformanceError(f"needs().reference is False, but loss() fails when "
                                   f"handed {label}: {type(exc).__name__}: {exc}") from exc
        for key, diff in _differences(base, out, {})[:1]:
            raise ConformanceError(f"needs().reference is False, but '{key}' changes by "
                                   f"{diff:.3g} when the objective is handed {label} "
                                   "instead of none: it uses the reference")
    return ["reference-free"]


def _reference_logps(objective: Objective, batch) -> dict[str, torch.Tensor]:
    """The reference model's log-probs for the rows of `batch`, by reference field: what
    loss_inputs computes with the reference model in the policy's place."""
    reference, _ = _models(reward_head=False, num_labels=1)
    with torch.no_grad():
        inputs, _ = _module(reference, None, objective).loss_inputs(batch)
    return {ref: getattr(inputs, field) for ref, field in REFERENCE_FIELDS[type(inputs)].items()}


# -- absent values ----------------------------------------------------------------------

def _check_absent_values(objective: Objective, inputs) -> list[str]:
    """An attribute model must mask out the values records lack: AttributeScores.targets
    is anything where `present` is False (the module writes 0 there, before scaling)."""
    if not isinstance(inputs, AttributeScores):
        return []
    absent = ~inputs.present
    if not bool(absent.any()):
        raise RuntimeError("prefopt.testing: the synthetic attributed batch gives every value; "
                           "the absent-values check needs some missing (change DATA_SEED)")
    generator = torch.Generator().manual_seed(2)
    # Other values, inside and outside [0, 1]: a finite value, as the module passes.
    other = (4.0 * torch.rand(inputs.targets.shape, generator=generator) - 1.5
             ).to(inputs.targets.dtype)
    changed = dataclasses.replace(inputs, targets=torch.where(absent, other, inputs.targets))
    base = objective.loss(inputs)
    try:
        out = objective.loss(changed)
    except Exception as exc:
        raise ConformanceError(f"loss() fails when the targets of absent values (present "
                               f"False) change: {type(exc).__name__}: {exc}") from exc
    for key, diff in _differences(base, out, {})[:1]:
        raise ConformanceError(f"'{key}' changes by {diff:.3g} when the targets of absent "
                               "values (present False) change: a value a record does not "
                               "give must be masked out with `present`, not read from "
                               "`targets`")
    return ["absent values"]


# -- batch, listing and attribute order -------------------------------------------------

@dataclass
class _Reordering:
    """A reordering of the inputs that must not change the loss."""

    check: str  # its name in the list of checks that ran
    moved: str  # what it reorders, for the message
    rule: str  # what must hold, for the message
    make: typing.Callable  # (inputs, generator) -> (reordered, rows, prompts)
    moves: tuple[str, ...]  # the layouts whose order it must change


def _reorderings(inputs) -> list[_Reordering]:
    """The reorderings that must not matter to inputs of this type."""
    if isinstance(inputs, ResponseLogps):
        return [_Reordering(
            check="batch order", moved="the order of the responses in the batch",
            rule="per-response metrics must be permuted with the responses, the loss "
                 "unchanged",
            make=_reorder_rows, moves=("per-response",))]
    if isinstance(inputs, AttributeScores):
        return [_Reordering(
                    check="batch order",
                    moved="the order of the responses in the batch (rows of predictions, "
                          "targets and present moved together)",
                    rule="per-response metrics must be permuted with the responses, metrics "
                         "over the responses giving an attribute keep their batch order, "
                         "the loss unchanged",
                    make=_reorder_rows, moves=tuple(_layouts_of(inputs))),
                _Reordering(
                    check="attribute order",
                    moved="the order of the attributes in the schema (columns of "
                          "predictions, targets and present, names and scale permuted "
                          "together)",
                    rule="names, not positions, say which attribute a column is",
                    make=_reorder_attributes, moves=())]
    if isinstance(inputs, (PairwiseLogps, PairwiseScores)):
        return [_Reordering(
            check="batch order", moved="the order of the pairs in the batch",
            rule="per-pair metrics must be permuted with the pairs, the loss unchanged",
            make=_reorder_rows, moves=("per-pair",))]
    if isinstance(inputs, UnpairedLogps):
        # kl_ratio stays as it is: prefopt-train estimates it from the batch as collated
        # (each prompt with the next record's completion), so re-collating in another order
        # may change it; reordering the inputs themselves must not change the rest.
        return [_Reordering(
            check="batch order",
            moved="the order of the examples in the batch (kl_ratio held fixed)",
            rule="per-example metrics must be permuted with the examples, metrics over one "
                 "class keep that class's batch order, the loss unchanged",
            make=_reorder_rows,
            moves=("per-example", "desirable-example", "undesirable-example"))]
    return [_Reordering(
                check="batch order",
                moved="the order of the prompts in the batch (group ids relabelled, each "
                      "prompt's completions moved with it)",
                rule="per-prompt and per-completion metrics must be permuted with them, "
                     "the loss unchanged",
                make=_reorder_prompts, moves=("per-prompt", "per-completion")),
            _Reordering(
                check="listing order",
                moved="the order in which each prompt's completions are listed",
                rule="ranks, not positions, say which completion is better; per-completion "
                     "metrics move with the completions",
                make=_reorder_listing, moves=("per-completion",))]


def _derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random order of n items in which none keeps its place (n < 2: as they are)."""
    if n < 2:
        return torch.arange(n)
    while True:
        order = torch.randperm(n, generator=generator)
        if bool((order != torch.arange(n)).all()):
            return order


def _take_rows(inputs, rows: torch.Tensor):
    """`inputs` with every per-row field in the order `rows`; per-batch and per-attribute
    fields unchanged."""
    return dataclasses.replace(inputs, **{k: v[rows] for k, v in _row_tensors(inputs).items()})


def _reorder_rows(inputs, generator):
    rows = _derangement(_row_count(inputs), generator)
    return _take_rows(inputs, rows), rows, rows


def _prompt_rows(group: torch.Tensor, prompts) -> list[torch.Tensor]:
    return [torch.nonzero(group == g).flatten() for g in prompts]


def _reorder_prompts(inputs, generator):
    """The prompts in another order, as collating their records in that order would give:
    group ids 0..G-1 in the new order, each prompt's rows moved with it, in their order."""
    order = _derangement(_prompt_count(inputs), generator)  # new prompt j: old order[j]
    rows = torch.cat(_prompt_rows(inputs.group, order))
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(len(order))
    reordered = dataclasses.replace(_take_rows(inputs, rows), group=relabel[inputs.group[rows]])
    return reordered, rows, order


def _reorder_listing(inputs, generator):
    """Each prompt's completions listed in another order; rows stay grouped by prompt, as
    prefopt-train collates them, and group ids are unchanged."""
    prompts = torch.arange(_prompt_count(inputs))
    rows = torch.cat([members[_derangement(len(members), generator)]
                      for members in _prompt_rows(inputs.group, prompts)])
    return _take_rows(inputs, rows), rows, prompts


def _reorder_attributes(inputs, generator):
    """An attribute model's inputs with the schema's attributes in another order: each
    column moved with its name and scale; rows unchanged."""
    order = _derangement(len(inputs.names), generator)
    moved = {k: getattr(inputs, k).index_select(axis, order)
             for k, axis in ATTRIBUTE_AXES.items()}
    reordered = dataclasses.replace(inputs, names=tuple(inputs.names[i] for i in order),
                                    **moved)
    rows = torch.arange(_row_count(inputs))
    return reordered, rows, rows


def _alignment(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Index i with after == before[i], for two orders of the same items."""
    position = {int(item): i for i, item in enumerate(before)}
    return torch.tensor([position[int(item)] for item in after], dtype=torch.long)


def _reordered(inputs, reordering: _Reordering) -> tuple[object, dict[int, torch.Tensor]]:
    """The inputs reordered, and the alignment of each layout by its length. Drawn from a
    fixed seed until every layout in `reordering.moves` changes order (a class of unpaired
    examples may keep its order by chance), so a positional metric of any layout shows."""
    before = _layouts_of(inputs)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        reordered, rows, prompts = reordering.make(inputs, generator)
        after = _layouts(reordered, rows, prompts)
        alignment = {name: _alignment(before[name], after[name]) for name in before}
        if all(not torch.equal(alignment[name], torch.arange(len(alignment[name])))
               for name in reordering.moves):
            return reordered, {len(index): index for index in alignment.values()}
    raise RuntimeError(f"prefopt.testing: no reordering for '{reordering.check}' changes the "
                       f"order of every layout in {reordering.moves}")


def _check_order(objective: Objective, inputs, reordering: _Reordering) -> None:
    reordered, alignment = _reordered(inputs, reordering)
    base, out = objective.loss(inputs), objective.loss(reordered)
    for key, diff in _differences(base, out, alignment)[:1]:
        what = "the loss" if key == "loss" else f"metric '{key}'"
        raise ConformanceError(f"{what} depends on {reordering.moved}: it differs by "
                               f"{diff:.3g} after a reordering (tolerance rtol={RTOL}, "
                               f"atol={ATOL}); {reordering.rule}")
