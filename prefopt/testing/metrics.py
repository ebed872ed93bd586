"""The metric checks: names (the shared schema of the format, or keys under `<name>/`,
never the module's own), the metrics each format requires, `monitor`, and each value's
layout (a detached, finite scalar or 1-D tensor in one layout of the format). The rules,
format by format, are in the package docstring (prefopt.testing). The layouts also serve
the order checks (prefopt.testing.invariance), which compare metrics entry by entry.
"""

from __future__ import annotations

import torch

from prefopt.objective import (
    FED_FORMATS,
    FORMATS,
    PREFERENCE_METRICS,
    AttributeScores,
    BatchFormat,
    LossOutput,
    Needs,
    Objective,
    PairwiseLogps,
    PairwiseScores,
    ResponseLogps,
    UnpairedLogps,
)
from prefopt.testing.case import _prompt_count, _row_count
from prefopt.testing.errors import ConformanceError

# Module-owned metrics: PreferenceModule logs these itself, an objective must not.
MODULE_METRICS = ("loss", "logps/chosen", "logps/rejected", "logps/response", "kl", "entropy")
# The shared implicit-reward schema of pairwise, unpaired and ranked records.
REWARD_METRICS = PREFERENCE_METRICS
# The shared schema of attribute models: `attributes/<attribute>/<metric>` for each
# attribute of the schema, in the attribute's units (mean absolute error, and the share of
# predictions that round to the value).
ATTRIBUTE_METRICS = ("mae", "accuracy")
# What each format must report (prefopt.objective.FORMATS says it). An unpaired batch may
# lack a class, and then has no chosen or rejected rewards and no margin; accuracies are
# always defined, and prefopt-train keeps the checkpoint with the best
# val/rewards/accuracies. Attributed records hold no preference: a finite scalar loss is all
# that is required of them.
REQUIRED_METRICS = {fmt: FORMATS[fmt].required_metrics for fmt in FED_FORMATS}
# rewards/chosen and rewards/rejected describe one side of the preferences: per pair, per
# prompt (its best or worst completions) or over one class of unpaired examples; never
# over every example or completion.
SIDE_LAYOUTS = {"rewards/chosen": ("per-pair", "per-prompt", "desirable-example"),
                "rewards/rejected": ("per-pair", "per-prompt", "undesirable-example")}
_LAYOUT_HINTS = {"desirable-example": " (values[labels])",
                 "undesirable-example": " (values[~labels])",
                 "per-prompt": " (indexed by group id)",
                 "ordered-prompt": " (the prompts with an ordered pair, by group id)"}
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
    layouts = {"per-prompt": prompts, "per-completion": rows}
    ordered = _ordered_prompts(inputs)
    if not bool(ordered.all()):  # else it is the per-prompt layout
        layouts["ordered-prompt"] = prompts[ordered]
    return layouts


def _ordered_prompts(inputs) -> torch.Tensor:
    """[G] by group id: the prompt holds two completions of different ranks (an ordered
    pair), so it has a `rewards/accuracies` (prefopt.plugins.kwise.ranking_metrics)."""
    ranks, group = inputs.ranks, inputs.group
    n = int(group.max()) + 1
    top = torch.full((n,), torch.iinfo(ranks.dtype).max, dtype=ranks.dtype,
                     device=ranks.device).scatter_reduce(
        0, group, ranks, "amin")
    bottom = torch.full_like(top, torch.iinfo(ranks.dtype).min).scatter_reduce(
        0, group, ranks, "amax")
    return top != bottom


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
                               f"{_helper(fmt)}; missing {absent}{why}")


def _helper(fmt: BatchFormat) -> str:
    helper = FORMATS[fmt].metrics_helper
    return f" ({helper} computes them)" if helper else ""


def _module_metrics(needs: Needs, fmt: BatchFormat) -> tuple[str, ...]:
    """What PreferenceModule logs itself for an objective with these needs."""
    if needs.reward_model:
        return ("loss",)
    logps = ("logps/response",) if FORMATS[fmt].best_and_worst is None \
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
