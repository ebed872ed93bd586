"""The invariance checks: the loss and the metrics do not depend on what they must not.

- reference-free: an objective on log-probs declaring needs().reference False ignores the
  reference log-probs it is handed;
- absent values: an attribute model masks out the targets of values records lack;
- batch, listing and attribute order: reordering the examples, each prompt's completions
  or the schema's attributes leaves the loss unchanged and moves the metrics with them.

Each in full: the package docstring (prefopt.testing).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass

import torch

from prefopt.objective import (
    AttributeScores,
    LossOutput,
    Objective,
    PairwiseLogps,
    PairwiseScores,
    RankedLogps,
    ResponseLogps,
    UnpairedLogps,
)
from prefopt.testing.case import _models, _module, _prompt_count, _row_count, _row_tensors
from prefopt.testing.errors import ConformanceError
from prefopt.testing.metrics import _layouts, _layouts_of

RTOL, ATOL = 1e-5, 1e-6


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
# The policy field each reference field mirrors, per log-prob input type (the per-token
# ones are filled only for objectives declaring needs().token_logps).
_TOKEN_REFERENCE_FIELDS = {"ref_token_logps": "token_logps"}
REFERENCE_FIELDS = {PairwiseLogps: {"ref_chosen": "chosen", "ref_rejected": "rejected",
                                    "ref_chosen_token_logps": "chosen_token_logps",
                                    "ref_rejected_token_logps": "rejected_token_logps"},
                    UnpairedLogps: {"ref_logps": "logps", **_TOKEN_REFERENCE_FIELDS},
                    RankedLogps: {"ref_logps": "logps", **_TOKEN_REFERENCE_FIELDS},
                    ResponseLogps: {"ref_logps": "logps", **_TOKEN_REFERENCE_FIELDS}}


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
    return {ref: getattr(inputs, field) for ref, field in REFERENCE_FIELDS[type(inputs)].items()
            if getattr(inputs, field) is not None}


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


# The attribute axis of each AttributeScores tensor, for the attribute-order check.
ATTRIBUTE_AXES = {"predictions": 1, "targets": 1, "present": 1, "scale": 0}


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
