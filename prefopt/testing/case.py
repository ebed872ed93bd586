"""The synthetic case the tensor checks run on, and the two checks on the case itself.

One batch of N_RECORDS synthetic records of the objective's format, collated by the real
data path and handed to the objective by a PreferenceModule set up as prefopt-train sets
it up (the tiny model moved off its reference, or the tiny reward model). Before it is
built, the feedable check: what prefopt-train cannot feed the objective is a failure.
On it, the loss-and-gradients check. Also what the other checks read of loss inputs:
their tensors, their per-row fields, and how many rows and prompts they hold.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass

import torch

from prefopt.objective import (
    FORMATS,
    AttributeScores,
    LossOutput,
    Objective,
    PairwiseScores,
    RankedScores,
    loss_output_problem,
    unfeedable,
)
from prefopt.testing.errors import ConformanceError

# Records per synthetic batch: pairs, unpaired examples, ranked prompts or attributed
# responses. Odd, so that an unpaired batch never holds as many desirable as undesirable
# examples: the length of a metric over one class then says which class it covers.
N_RECORDS = 7
# Both classes present, 2+ examples each; attributed records: quality and length given by
# all 7, order by 4 (so some values are absent); checked in metrics._layouts_of
# and invariance._check_absent_values.
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


# -- feedable ---------------------------------------------------------------------------

def _check_feedable(objective: Objective, name: str) -> None:
    """What prefopt-train cannot hand the objective is a failure, not a skipped check
    (the same rule as prefopt-train's: prefopt.objective.unfeedable)."""
    fmt = objective.batch_format
    if not FORMATS[fmt].fed:
        raise ConformanceError(f"objective '{name}' consumes {fmt.value}: an online objective, "
                               "which this kit does not cover (it checks losses on recorded "
                               "records); test its advantages and loss against hand values, "
                               "as prefopt's tests/plugins/test_ppo.py does")
    reason = unfeedable(objective)
    if reason:
        raise ConformanceError(f"objective '{name}' cannot be trained by prefopt-train: "
                               f"{reason}")


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
    # The DataLoader draws its base seed from the global generator: forked, so that the
    # kit leaves the caller's random state as it was.
    with torch.random.fork_rng(devices=[]):
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

    # prefopt-train hands the module the schema of attributed records
    # (prefopt.training.train.build).
    schema = _schema() if FORMATS[objective.batch_format].attributed else None
    # The reference log-prob implementation: the same numbers on every device and dtype.
    return PreferenceModule(policy, reference, objective, OptimizerConfig(), SchedulerConfig(),
                            logprob_impl="torch", schema=schema)


def _case(objective: Objective) -> _Case:
    """The kit's batch of the objective's format, through a PreferenceModule set up as
    prefopt-train sets it up for this objective (a reference model only if it needs one;
    an attribute model with one output per attribute, on records without their attribute
    line)."""
    needs = objective.needs()
    attributed = FORMATS[objective.batch_format].attributed
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
    # The same words as the training module's (prefopt.objective.loss_output_problem).
    problem = loss_output_problem(out, needs_grad=False)
    if problem:
        raise ConformanceError(problem)
    loss = out.loss
    if not torch.isfinite(loss):
        raise ConformanceError(f"the loss is not finite on the tiny model: {loss.item()}")
    problem = loss_output_problem(out, needs_grad=True, source=f"the {owner}'s {outputs}")
    if problem:
        raise ConformanceError(problem)
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
