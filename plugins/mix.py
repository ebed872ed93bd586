"""Mix: a weighted sum of installed objectives, trained on one forward pass.

For parts L_1 … L_n (objectives of one batch format) and weights w_1 … w_n ≥ 0,

    L_mix = Σ_i w_i L_i

where every L_i is the part's own `loss` on the inputs the training module built once for
the batch: the same tensors, so one forward pass (policy and, if any part needs it,
reference) serves all parts, and the gradient is Σ_i w_i ∇L_i. Examples: RPO (Pang et al.,
"Iterative Reasoning Preference Optimization", NeurIPS 2024, arXiv:2404.19733) is DPO plus
α times the length-normalised NLL of the chosen completion, the built-in preset `rpo`:

    prefopt-train objective=mix objective.parts=[dpo,sft] objective.weights=[1.0,1.0] \\
        objective.settings.sft.average=sequence

Parts are found by name through the registry, third-party objectives included; a part's
settings are `objective.settings.<part>.<setting>` and are checked against the part's own
Config. What the module computes is the union of the parts' needs (a reference if any
part needs one, per-token log-probs if any, ...); a part still sees only the fields it
asked for (the others are None), so it computes exactly what it computes alone.

Metrics: every part's loss and metrics under `mix/<part>/` (`mix/dpo/loss`,
`mix/dpo/rewards/margins`, `mix/sft/sft/nll_per_token`); the shared schema (`rewards/*`),
key by key, from the first part that reports it; the best checkpoint by the first part's
monitored metric.

Refused, each with a message naming the override to fix: an empty `parts`, `weights` of
another length or with a negative weight, a part listed twice (settings are per part name,
so two copies could not differ: add their weights instead), `mix` inside a mix, an online
part, parts of different batch formats, a reward-model part beside a policy part, parts
asking for different value models, and an unknown name (the available ones are listed).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt import registry
from prefopt.objective import (
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    ObjectiveConfig,
    OnlineObjective,
    UnknownSettingError,
    loss_output_problem,
)

PREFIX = "mix"


class MixError(registry.PluginError):
    """Parts that one mix cannot combine; prefopt-train reports it in one line."""


class Mix(Objective):
    """Weighted sum of objectives of one batch format, on one forward pass."""

    description = ("weighted sum of installed objectives of one batch format "
                   "(objective.parts, objective.weights); one forward pass")
    # A class attribute must name one format (prefopt-plugins lists it); an instance has
    # its parts' format.
    batch_format = BatchFormat.PAIRWISE

    @dataclass
    class Config(ObjectiveConfig):
        parts: List[str] = field(default_factory=lambda: ["dpo"])
        """The objectives summed, by their `objective=<name>` names."""
        weights: List[float] = field(default_factory=lambda: [1.0])
        """w_i ≥ 0 of each part, in the order of `parts`."""
        settings: Dict[str, Any] = field(default_factory=dict)
        """Per-part settings, {part: {setting: value}}: objective.settings.dpo.beta=0.2."""

    def __init__(self, config: Config):
        super().__init__(config)
        parts, weights = list(config.parts), [float(w) for w in config.weights]
        _check_lists(parts, weights)
        settings = dict(config.settings or {})
        for part in settings:
            if part not in parts:
                raise ValueError(f"objective.settings.{part}: '{part}' is not one of "
                                 f"objective.parts ({', '.join(parts)}); add it to the parts "
                                 "or drop its settings")
        self.parts: dict[str, Objective] = {
            part: _build_part(part, settings.get(part) or {}, config.name or PREFIX)
            for part in parts}
        self.weights = dict(zip(parts, weights))
        self.batch_format = _common_format(self.parts)
        self._needs = _combined_needs(self.parts)
        self._part_needs = {part: objective.needs() for part, objective in self.parts.items()}
        # Metrics go under the mix's entry-point name (the kit's rule for own metrics).
        self.prefix = config.name or PREFIX
        self.monitor = _monitor(self.prefix, parts[0], self.parts[parts[0]].monitor)

    def needs(self) -> Needs:
        return self._needs

    def check_data(self, train_groups: list) -> None:
        for objective in self.parts.values():
            objective.check_data(train_groups)

    def state_dict(self) -> dict:
        """The parts' training state (e.g. BCO's running reward mean), by part."""
        return {part: state for part, objective in self.parts.items()
                if (state := objective.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for part, part_state in state.items():
            self.parts[part].load_state_dict(part_state)

    def loss(self, inputs) -> LossOutput:
        total = None
        metrics = {}
        shared = {}
        for part, objective in self.parts.items():
            out = objective.loss(_view(inputs, self._part_needs[part]))
            problem = loss_output_problem(out, needs_grad=False)
            if problem:
                raise MixError(f"objective '{self.prefix}', part '{part}': {problem}")
            term = self.weights[part] * out.loss
            total = term if total is None else total + term
            metrics[f"{self.prefix}/{part}/loss"] = out.loss.detach()
            for key, value in out.metrics.items():
                metrics[f"{self.prefix}/{part}/{key}"] = value
                if not key.startswith(f"{part}/"):  # the shared schema, not the part's own
                    shared.setdefault(key, value)
        return LossOutput(total, {**shared, **metrics})


def _check_lists(parts: list[str], weights: list[float]) -> None:
    if not parts:
        raise ValueError("objective.parts is empty: list the objectives to sum, e.g. "
                         "objective.parts=[dpo,sft] objective.weights=[1.0,0.2]")
    if len(weights) != len(parts):
        raise ValueError(f"objective.weights has {len(weights)} value(s) for "
                         f"{len(parts)} part(s) ({', '.join(parts)}): give one weight per "
                         "part, in the same order")
    for part, weight in zip(parts, weights):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"objective.weights: the weight of '{part}' is {weight}; weights "
                             "must be finite and ≥ 0 (a negative one would maximise that "
                             "part's loss)")
    for part in parts:
        if parts.count(part) > 1:
            raise ValueError(f"objective.parts lists '{part}' {parts.count(part)} times: "
                             "list it once and add its weights (settings are per part name, "
                             "so the copies could not differ)")


def _build_part(part: str, values: Mapping, mix_name: str) -> Objective:
    """The objective `part`, configured from its defaults and `values`."""
    if part == mix_name:
        raise MixError(f"objective.parts: '{part}' is the mix itself; list the objectives "
                       "to sum directly")
    try:
        cls = registry.load(part)
    except registry.PluginError as exc:
        hint = ""
        if part in registry.presets():
            hint = (f" '{part}' is a preset: list the objectives it sets (prefopt-plugins "
                    "shows its file)")
        raise MixError(f"objective.parts: {exc}{hint}") from exc
    if issubclass(cls, Mix):
        raise MixError(f"objective.parts: '{part}' is a mix itself; list its parts "
                       "directly")
    if issubclass(cls, OnlineObjective):
        raise MixError(f"objective.parts: '{part}' is an online objective (it samples its "
                       "own completions); a mix sums objectives on recorded batches")
    config = _part_config(cls, part, values)
    try:
        return cls(config)
    except ValueError as exc:  # a value its Config's type allows but the part refuses
        message = str(exc).replace("objective.", f"objective.settings.{part}.")
        raise ValueError(f"part '{part}': {message}") from exc


def _part_config(cls: type[Objective], part: str, values) -> ObjectiveConfig:
    """cls.Config with `values`, typed as Hydra types a config: an unknown key or a value of
    the wrong type is an error naming objective.settings.<part>.<key>."""
    if not isinstance(values, Mapping):
        raise ValueError(f"objective.settings.{part} must map {part}'s settings to values, "
                         f"got {values!r}")
    declared = [f.name for f in dataclasses.fields(cls.Config) if f.name != "name"]
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(str(key), declared, n=1)
            hint = f" Did you mean objective.settings.{part}.{close[0]}?" if close else ""
            raise UnknownSettingError(
                f"objective.settings.{part}.{key}: objective '{part}' has no setting '{key}' "
                f"(its settings: {', '.join(declared) or 'none'}).{hint}")
    node = OmegaConf.structured(cls.Config(name=part))
    for key, value in values.items():
        try:
            node[key] = value
        except OmegaConfBaseException as exc:
            raise ValueError(f"objective.settings.{part}.{key}={value!r}: "
                             f"{str(exc).splitlines()[0]}") from exc
    return OmegaConf.to_object(node)


def _common_format(parts: dict[str, Objective]) -> BatchFormat:
    first, *others = parts
    for part in others:
        if parts[part].batch_format != parts[first].batch_format:
            raise MixError(f"objective.parts: '{first}' consumes "
                           f"{parts[first].batch_format.value} records and '{part}' "
                           f"{parts[part].batch_format.value} records; the parts of a mix "
                           "share one batch, so they must consume one format")
    return parts[first].batch_format


def _combined_needs(parts: dict[str, Objective]) -> Needs:
    """The union of the parts' needs, or an error where one batch cannot serve them all."""
    needs = {part: objective.needs() for part, objective in parts.items()}
    scorers = [part for part, n in needs.items() if n.reward_model]
    policies = [part for part, n in needs.items() if not n.reward_model]
    if scorers and policies:
        raise MixError(f"objective.parts: '{scorers[0]}' trains a reward model (its loss "
                       f"reads scores) and '{policies[0]}' a policy (its loss reads "
                       "log-probs); a run trains one model: mix reward-model objectives "
                       "only with each other")
    values = {part: n.value_model for part, n in needs.items() if n.value_model is not None}
    kinds = list(dict.fromkeys(values.values()))  # distinct, in the parts' order
    if len(kinds) > 1:
        a, b = (next(p for p, v in values.items() if v == kind) for kind in kinds[:2])
        raise MixError(f"objective.parts: '{a}' asks for a {kinds[0].value} value model "
                       f"and '{b}' for a {kinds[1].value} one; a run has one value model")
    return Needs(reference=any(n.reference for n in needs.values()),
                 token_logps=any(n.token_logps for n in needs.values()),
                 entropy=any(n.entropy for n in needs.values()),
                 mismatched_pairs=any(n.mismatched_pairs for n in needs.values()),
                 reward_model=bool(scorers),
                 value_model=next(iter(values.values()), None))


def _view(inputs, needs: Needs):
    """`inputs` with the fields a part did not ask for set to None (the same tensors
    otherwise), so that it computes what it computes alone."""
    if not dataclasses.is_dataclass(inputs):
        return inputs
    hidden = {}
    for f in dataclasses.fields(inputs):
        name = f.name
        unasked = (name.startswith("ref_") and not needs.reference) \
            or (("token_logps" in name or "token_mask" in name) and not needs.token_logps) \
            or (name == "kl_ratio" and not needs.mismatched_pairs)
        if unasked and getattr(inputs, name) is not None:
            hidden[name] = None
    return dataclasses.replace(inputs, **hidden) if hidden else inputs


def _monitor(prefix: str, part: str, monitor: tuple[str, str]) -> tuple[str, str]:
    """The first part's monitored metric, under the name the mix logs it: its loss and its
    own metrics under mix/<part>/, the shared schema and the module's metrics as they are."""
    metric, mode = monitor
    if metric == "loss" or metric.startswith(f"{part}/"):
        return f"{prefix}/{part}/{metric}", mode
    return metric, mode
