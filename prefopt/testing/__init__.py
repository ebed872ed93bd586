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
  key (also one forced in with a `+`) and a value of the wrong type are refused.

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
      [M]; or per ordered prompt [G'] (the prompts with two different ranks, by group id,
      as `rewards/accuracies` leaves out the prompts without an ordered pair);
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
  together; `scale` and `names` are per attribute and stay). The per-token fields of an
  objective declaring needs().token_logps ([rows, L] log-probs and masks, policy and
  reference) move with their rows; the reference-free check hands it per-token
  reference log-probs too;
- listing order (ranked): listing each prompt's completions in another order, same
  groups and ranks, leaves the loss and the per-prompt metrics unchanged;
- attribute order (attribute models): permuting the attributes of the schema (the
  columns of predictions, targets and present, with names and scale) leaves the loss and
  metrics unchanged: names, not positions, say which attribute a column is (a user's
  data.attributes lists them in any order).

Where the checks live: `check_objective` and the declaration and entry-point checks here;
the config checks and `compose_objective` in prefopt.testing.config; the synthetic case
the tensor checks run on, with the feedable and the loss-and-gradients checks, in
prefopt.testing.case; the metric checks in prefopt.testing.metrics; the reference-free,
absent-values and order checks in prefopt.testing.invariance. `__all__` lists the public
names, all importable from prefopt.testing; names with a leading underscore, in any of
these modules, are the kit's internals.
"""

from __future__ import annotations

import dataclasses
import typing

from prefopt import registry
from prefopt.objective import (
    API_VERSION,
    FED_FORMATS,
    BatchFormat,
    Needs,
    Objective,
    ObjectiveConfig,
)

# Read as prefopt.testing._models and prefopt.testing._tokenizer by prefopt's own tests
# (tests/integration/test_distributed.py builds its module and batches from them).
from prefopt.testing.case import (  # noqa: F401
    N_RECORDS,
    _case,
    _check_feedable,
    _check_loss_and_gradients,
    _detached,
    _models,
    _tokenizer,
)
from prefopt.testing.config import check_config, compose_objective
from prefopt.testing.errors import ConformanceError
from prefopt.testing.invariance import (
    REFERENCE_FIELDS,
    REFERENCE_FREE_NOT_APPLICABLE,
    _check_absent_values,
    _check_order,
    _check_reference_free,
    _reorderings,
)
from prefopt.testing.metrics import REQUIRED_METRICS, _check_metrics
from prefopt.testing.reward import REWARD_CHECKS, check_reward

__all__ = [
    # the checks, and what they raise
    "check_objective", "check_declaration", "check_entry_point", "check_config",
    "check_loss", "ConformanceError",
    # reward functions and factories (prefopt.rewards)
    "check_reward", "REWARD_CHECKS",
    # for testing an objective's YAML presets
    "compose_objective",
    # what the checks return and run on
    "TENSOR_CHECKS", "REFERENCE_FREE_NOT_APPLICABLE", "REFERENCE_FIELDS", "FED_FORMATS",
    "REQUIRED_METRICS", "N_RECORDS",
]

# Names of the tensor checks, as check_objective returns them when they run.
TENSOR_CHECKS = ("loss and gradients", "metric names", "reference-free", "absent values",
                 "batch order", "listing order", "attribute order")


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


# -- tensor checks on the tiny model ----------------------------------------------------

def check_loss(objective: Objective, name: str) -> list[str]:
    """The tensor checks (see the module docstring); returns those that ran."""
    needs = objective.needs()
    if not isinstance(needs, Needs):
        raise ConformanceError(f"{type(objective).__name__}.needs() returned {needs!r}, "
                               "not a prefopt.objective.Needs")
    _check_feedable(objective, name)
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
