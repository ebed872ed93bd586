"""The plugin contract: what an objective declares, what it receives, what it returns.

An objective is a subclass of `Objective` with

- `Config`: a dataclass deriving from `ObjectiveConfig`; it is the objective's Hydra schema
  (group `objective`), so every field needs a type, a default and a docstring comment, and
  it refuses settings it does not declare;
- `batch_format`: which records it consumes (`BatchFormat`);
- `needs()`: what the training module must compute for it (`Needs`);
- `loss(inputs) -> LossOutput`: pure tensor math over log-probabilities;
- optionally `state_dict()` / `load_state_dict()`: training state kept in checkpoints.

It is published under the entry-point group `prefopt.objectives`; the built-ins are
registered there too (pyproject.toml), so there is one code path for both.

`FORMATS` is the one table of what differs between batch formats: the record fields, whether
`prefopt-train` feeds the format to an offline objective, how a batch's rows become the loss
input of an objective on log-probs or of a reward model, which rows are the preferred and
dispreferred ones, and which shared metrics an objective of the format must log. The
training module, `prefopt-train` and the conformance kit all read it; none of them branches
on a format by itself.
"""

from __future__ import annotations

import abc
import difflib
import enum
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping

import torch

# Bumped when the contract below changes incompatibly; the registry refuses plugins built
# for another version instead of failing somewhere deep inside a training step.
API_VERSION = 1


class BatchFormat(str, enum.Enum):
    """Record formats. Field names follow TRL's dataset conventions."""

    PAIRWISE = "pairwise"  # {prompt, chosen, rejected}
    UNPAIRED = "unpaired"  # {prompt, completion, label}
    RANKED = "ranked"  # {prompt, completions, ranks}
    ATTRIBUTED = "attributed"  # {prompt, response, attributes}
    PROMPTS = "prompts"  # {prompt}, for online RL


class ValueModel(str, enum.Enum):
    """Where an online objective's value function V(s_t) lives (lower-case member names:
    Hydra reads an enum override by name, `objective.value_model=separate`)."""

    shared = "shared"  # a head on the policy's own trunk
    separate = "separate"  # a head on a copy of the trunk, trained alongside


@dataclass(frozen=True)
class Needs:
    """What an objective asks the training module to provide."""

    reference: bool = True  # log-probs under a frozen reference model
    # Per-token log-probs, not only sums over the completion: the offline inputs then carry
    # `*token_logps` and `*token_mask` fields ([rows, L]), the online ones always do.
    token_logps: bool = False
    entropy: bool = False  # per-token entropy with gradient (it is always logged, detached)
    mismatched_pairs: bool = False  # log-ratios of (prompt_i, completion_i+1): KL estimates
    reward_model: bool = False  # train a scalar-head reward model: loss() gets scores
    # Online objectives (batch format `prompts`): a value head, on the policy's trunk or on
    # a copy of it; None for none.
    value_model: ValueModel | None = None

    def __post_init__(self):
        if self.value_model is not None:  # a plain "shared" is accepted and normalised
            object.__setattr__(self, "value_model", ValueModel(self.value_model))


class UnknownSettingError(ValueError):
    """A setting that the objective's Config does not declare, e.g. `+objective.typo=1`."""


@dataclass
class ObjectiveConfig:
    """Base of every objective's Config. The registry fills `name` with the entry-point name.

    Only declared fields can be set. Hydra refuses `objective.typo=1` by the schema, but a
    `+` forces the key into the composed config, and OmegaConf's conversion back to the
    dataclass then sets it as a plain attribute that the objective never reads: that is
    refused here, naming the key and the fields there are."""

    name: str = ""

    def __setattr__(self, key: str, value) -> None:
        fields = self.__dataclass_fields__
        if key not in fields and not key.startswith("_"):
            declared = [f for f in fields if f != "name"]
            close = difflib.get_close_matches(key, declared, n=1)
            hint = f" Did you mean objective.{close[0]}?" if close else ""
            raise UnknownSettingError(
                f"objective.{key}: objective '{getattr(self, 'name', '')}' has no setting "
                f"'{key}' (its settings: {', '.join(declared) or 'none'}).{hint} A + in "
                "front of an override does not add settings to an objective: its Config "
                "declares them all.")
        object.__setattr__(self, key, value)


def require_positive(config: ObjectiveConfig, *fields: str) -> None:
    """Refuse a config whose named fields are not > 0, naming the override to fix."""
    for field_name in fields:
        value = getattr(config, field_name)
        if not value > 0:
            raise ValueError(f"objective.{field_name} must be > 0, got {value}")


def require_non_negative(config: ObjectiveConfig, *fields: str) -> None:
    """Refuse a config whose named fields are not >= 0 (NaN included), naming the override."""
    for field_name in fields:
        value = getattr(config, field_name)
        if not value >= 0:
            raise ValueError(f"objective.{field_name} must be >= 0, got {value}")


# Per-token fields of the offline inputs, filled only when needs().token_logps (None
# otherwise). [rows, L] over the L positions that predict a token of the collated batch
# (its width - 1): `*token_logps` are log π(y_t | x, y_<t) at the completion's tokens and
# 0 elsewhere, `*token_mask` (bool) marks those tokens (contiguous, with padding after
# them), so (token_logps * mask).sum(-1) is the summed field; `ref_*token_logps` are the
# reference's, on the same mask, without gradient (None without a reference model).


@dataclass
class PairwiseLogps:
    """Summed completion log-probabilities of a batch of B preference pairs.

    `*_tokens` count the completion tokens that were summed (for length normalisation).
    The reference fields are None when the objective needs no reference model; the
    per-token ones (see above) unless it declares `needs().token_logps`.
    """

    chosen: torch.Tensor  # [B] Σ_t log π(y_w,t | x, y_w,<t)
    rejected: torch.Tensor  # [B] Σ_t log π(y_l,t | x, y_l,<t)
    chosen_tokens: torch.Tensor  # [B]
    rejected_tokens: torch.Tensor  # [B]
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_token_logps: torch.Tensor | None = None  # [B, L]
    rejected_token_logps: torch.Tensor | None = None  # [B, L]
    chosen_token_mask: torch.Tensor | None = None  # [B, L] bool
    rejected_token_mask: torch.Tensor | None = None  # [B, L] bool
    ref_chosen_token_logps: torch.Tensor | None = None  # [B, L]
    ref_rejected_token_logps: torch.Tensor | None = None  # [B, L]


@dataclass
class UnpairedLogps:
    """B unpaired completions with their desirability labels."""

    logps: torch.Tensor  # [B] Σ_t log π(y_t | x, y_<t)
    tokens: torch.Tensor  # [B]
    labels: torch.Tensor  # [B] bool, True = desirable
    ref_logps: torch.Tensor | None = None
    # Mean over mismatched (x_i, y_i+1) pairs of Σ_t log π/π_ref, detached and averaged
    # across devices; None unless the objective declares `mismatched_pairs`.
    kl_ratio: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None  # [B, L], with needs().token_logps
    token_mask: torch.Tensor | None = None  # [B, L] bool
    ref_token_logps: torch.Tensor | None = None  # [B, L]


@dataclass
class RankedLogps:
    """M completions of G prompts; `group` says which prompt, `ranks` how good (lower is
    better, equal is a tie)."""

    logps: torch.Tensor  # [M]
    tokens: torch.Tensor  # [M]
    ranks: torch.Tensor  # [M]
    group: torch.Tensor  # [M] in [0, G)
    ref_logps: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None  # [M, L], with needs().token_logps
    token_mask: torch.Tensor | None = None  # [M, L] bool
    ref_token_logps: torch.Tensor | None = None  # [M, L]


@dataclass
class ResponseLogps:
    """B responses of attributed records (SteerLM): the attribute line is context, so these
    are log π(y | x, attributes) summed over the response's tokens."""

    logps: torch.Tensor  # [B]
    tokens: torch.Tensor  # [B]
    ref_logps: torch.Tensor | None = None
    token_logps: torch.Tensor | None = None  # [B, L], with needs().token_logps
    token_mask: torch.Tensor | None = None  # [B, L] bool
    ref_token_logps: torch.Tensor | None = None  # [B, L]


@dataclass
class AttributeScores:
    """An attribute model's predictions for B responses, on the schema's [0, 1] scale
    ((value - min) / (max - min)), with the records' values on the same scale."""

    predictions: torch.Tensor  # [B, A]
    targets: torch.Tensor  # [B, A]; anything where `present` is False
    present: torch.Tensor  # [B, A] bool: the record gives this attribute
    names: tuple[str, ...]  # the A attribute names, in schema order
    scale: torch.Tensor  # [A] max - min: back to the attributes' units for metrics


@dataclass
class PairwiseScores:
    """Scalar rewards r(x, y) of B pairs from a reward model under training."""

    chosen: torch.Tensor  # [B]
    rejected: torch.Tensor  # [B]
    margins: torch.Tensor  # [B] the records' `margin` (0 where none was given)


@dataclass
class RankedScores:
    scores: torch.Tensor  # [M]
    ranks: torch.Tensor  # [M]
    group: torch.Tensor  # [M]


@dataclass
class Experience:
    """One scored rollout, everything detached: R completions sampled from the policy for
    G prompts (`group` says which). Token tensors are [R, L] over the positions that
    predict a token of the row; `mask` marks the completion's tokens (contiguous,
    right-padded), and every token tensor is 0 off it."""

    mask: torch.Tensor  # [R, L] bool
    logps: torch.Tensor  # [R, L] log π_old(y_t): the policy that sampled, at sampling time
    scores: torch.Tensor  # [R] the reward source's, missing-EOS penalty included
    group: torch.Tensor  # [R] in [0, G)
    ref_logps: torch.Tensor | None = None  # [R, L] log π_ref(y_t), if needs().reference
    values: torch.Tensor | None = None  # [R, L] V_old(s_t), if needs().value_model


@dataclass
class Advantages:
    """What an online objective derives from an Experience before optimising on it."""

    advantages: torch.Tensor  # [R, L], 0 off the mask (a sequence's value on its tokens)
    returns: torch.Tensor | None = None  # [R, L] value targets, for objectives with values
    rewards: torch.Tensor | None = None  # [R] the rewards optimised (KL penalty included)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class OnlineLogps:
    """A minibatch of an Experience with the current policy's log-probs (with gradient).

    Row-aligned slices of the Experience and its Advantages come with it."""

    logps: torch.Tensor  # [r, L] log π_θ(y_t), with gradient
    entropy: torch.Tensor  # [r] Σ_t H(π_θ(· | s_t)) over the completion; grad if needs().entropy
    mask: torch.Tensor  # [r, L]
    old_logps: torch.Tensor  # [r, L]
    advantages: torch.Tensor  # [r, L]
    ref_logps: torch.Tensor | None = None
    values: torch.Tensor | None = None  # [r, L] V_θ(s_t), with gradient
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None


@dataclass
class LossOutput:
    """A scalar loss to minimise and metrics to log.

    Metric values are per-example tensors [B] (averaged over examples by the module) or
    scalars. Names follow the shared schema (docs/architecture.md): `rewards/chosen`,
    `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, ...; objective-specific ones
    go under the objective's name (e.g. `ipo/target`). The module adds the `train/` or
    `val/` prefix.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def loss_output_problem(out, needs_grad: bool, source: str = "the policy's log-probs"
                        ) -> str | None:
    """What breaks the contract in what `loss()` returned, or None: a LossOutput whose
    `loss` is a scalar tensor, with a gradient where `needs_grad` (a training step; `source`
    says what it should depend on). Finiteness is checked where the value is read (the
    training module's metric check, the conformance kit). The training module and the
    conformance kit both use it, so they refuse the same thing in the same words."""
    if not isinstance(out, LossOutput):
        return f"loss() returned {type(out).__name__}, not a LossOutput"
    loss = out.loss
    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
        got = f"shape {list(loss.shape)}" if isinstance(loss, torch.Tensor) \
            else type(loss).__name__
        return (f"LossOutput.loss must be a scalar tensor, got {got}: reduce the "
                "per-example losses to one number (e.g. losses.mean())")
    if needs_grad and not loss.requires_grad:
        return f"the loss carries no gradient: it does not depend on {source}"
    return None


class Objective(abc.ABC):
    """Base class of preference objectives. See the module docstring for the contract."""

    api_version: ClassVar[int] = API_VERSION
    batch_format: ClassVar[BatchFormat]
    description: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    # The validation metric that picks the best checkpoint (without the `val/` prefix),
    # and whether higher ("max") or lower ("min") is better.
    monitor: ClassVar[tuple[str, str]] = ("rewards/accuracies", "max")

    def __init__(self, config: ObjectiveConfig):
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__qualname__}, "
                            f"got {type(config).__qualname__}")
        self.config = config

    def needs(self) -> Needs:
        return Needs()

    def check_data(self, train_groups: list) -> None:
        """Look at the encoded training data once before training (e.g. to warn about class
        balance). The default accepts anything."""

    def state_dict(self) -> dict:
        """State that changes during training (a running mean, an adaptive coefficient):
        the training modules save it in every checkpoint and give it back to
        `load_state_dict` on resume. Plain Python values or tensors; none by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` returned ({} when resuming a run saved without)."""

    @abc.abstractmethod
    def loss(self, inputs) -> LossOutput:
        """The loss and metrics of one batch (pure tensor math, no model calls).

        `inputs` is PairwiseLogps, UnpairedLogps, RankedLogps or ResponseLogps by
        `batch_format`, or PairwiseScores / RankedScores / AttributeScores when
        `needs().reward_model`; OnlineLogps for online objectives (one minibatch).
        """


class OnlineObjective(Objective):
    """An objective that learns from its own samples (REINFORCE, PPO).

    The module samples `rollout.num_samples` completions per prompt, scores them with the
    reward source, computes the Experience under no_grad, and asks the objective for its
    Advantages (`advantages`, pure tensor math). It then makes `schedule()` = (epochs,
    minibatches) passes over the rollout, one optimizer step per minibatch, each on
    `loss(OnlineLogps)`. Minibatches are the same rows in every epoch's shuffled order,
    and the Experience's old log-probs are computed on the first epoch's minibatches
    exactly as that epoch feeds them, so the first minibatch's ratio π_θ/π_old is 1.
    """

    batch_format: ClassVar[BatchFormat] = BatchFormat.PROMPTS
    monitor: ClassVar[tuple[str, str]] = ("reward/mean", "max")

    def schedule(self) -> tuple[int, int]:
        """(epochs over each rollout, minibatches per epoch)."""
        return 1, 1

    @abc.abstractmethod
    def advantages(self, experience: Experience) -> Advantages:
        """Per-token advantages (and returns) of a rollout."""

    def after_rollout(self, experience: Experience) -> dict[str, torch.Tensor]:
        """Called once a rollout's optimisation is done (e.g. an adaptive KL coefficient
        updates here); returns metrics to log."""
        return {}


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """The shared `rewards/*` metrics from per-pair implicit rewards.

    `rewards/accuracies` scores a tie as 0.5: equal rewards express no preference, which is
    a coin flip, not a mistake. So a policy equal to its reference scores exactly 0.5.
    """
    chosen_rewards = chosen_rewards.detach()
    rejected_rewards = rejected_rewards.detach()
    accuracy = (chosen_rewards > rejected_rewards).float() \
        + 0.5 * (chosen_rewards == rejected_rewards).float()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": accuracy,
    }


# -- the table of batch formats --------------------------------------------------------

@dataclass
class Rows:
    """One collated batch as a format's builders see it: the rows that go through the
    model (the mismatched KL rows of unpaired batches excluded) and the batch itself.

    `slot` says which completion of its prompt a row is (chosen 0, rejected 1 for pairs),
    `group` which prompt, `ranks` how good (ranked records; lower is better)."""

    slot: torch.Tensor  # [R]
    group: torch.Tensor  # [R] in [0, G)
    ranks: torch.Tensor  # [R]
    batch: Mapping[str, torch.Tensor]  # the collated batch: labels, margins, attributes, ...


@dataclass
class AttributeScale:
    """An attribute schema's names and ranges, for an attribute model's loss input."""

    names: tuple[str, ...]
    min: torch.Tensor  # [A]
    scale: torch.Tensor  # [A] max - min


@dataclass
class TokenLogps:
    """Per-token log-probs of a batch's rows, for objectives declaring needs().token_logps:
    [R, L] over the positions that predict a token, 0 off `mask`."""

    logps: torch.Tensor  # [R, L] log π(y_t | x, y_<t), with gradient
    mask: torch.Tensor  # [R, L] bool: the completion's tokens
    ref_logps: torch.Tensor | None = None  # [R, L] log π_ref(y_t | x, y_<t), no gradient


# An objective on log-probs: (rows, Σ log π [R], token counts [R], Σ log π_ref [R] or None,
# kl_ratio or None, per-token log-probs or None) -> its loss input.
LogpsBuilder = Callable[[Rows, torch.Tensor, torch.Tensor, "torch.Tensor | None",
                         "torch.Tensor | None", "TokenLogps | None"], object]
# A reward model: (rows, head outputs [R, K], attribute scale or None) -> its loss input.
ScoresBuilder = Callable[[Rows, torch.Tensor, "AttributeScale | None"], object]


def _token_fields(per_token: TokenLogps | None, select=slice(None), side: str = ""
                  ) -> dict[str, torch.Tensor | None]:
    """The per-token fields of a loss input (`side`: "chosen_", "rejected_" or "") for the
    rows `select`; none without per-token log-probs."""
    if per_token is None:
        return {}
    ref = per_token.ref_logps
    return {f"{side}token_logps": per_token.logps[select],
            f"{side}token_mask": per_token.mask[select],
            f"ref_{side}token_logps": ref[select] if ref is not None else None}


def _pairwise_logps(rows, logps, tokens, ref, kl_ratio, per_token=None):
    c, r = rows.slot == 0, rows.slot == 1
    return PairwiseLogps(chosen=logps[c], rejected=logps[r], chosen_tokens=tokens[c],
                         rejected_tokens=tokens[r],
                         ref_chosen=ref[c] if ref is not None else None,
                         ref_rejected=ref[r] if ref is not None else None,
                         **_token_fields(per_token, c, "chosen_"),
                         **_token_fields(per_token, r, "rejected_"))


def _unpaired_logps(rows, logps, tokens, ref, kl_ratio, per_token=None):
    return UnpairedLogps(logps, tokens, rows.batch["labels"], ref, kl_ratio,
                         **_token_fields(per_token))


def _ranked_logps(rows, logps, tokens, ref, kl_ratio, per_token=None):
    return RankedLogps(logps, tokens, rows.ranks, rows.group, ref, **_token_fields(per_token))


def _response_logps(rows, logps, tokens, ref, kl_ratio, per_token=None):
    return ResponseLogps(logps, tokens, ref, **_token_fields(per_token))


def _pairwise_scores(rows, outputs, attributes):
    scores = outputs[:, 0]
    return PairwiseScores(scores[rows.slot == 0], scores[rows.slot == 1], rows.batch["margins"])


def _ranked_scores(rows, outputs, attributes):
    return RankedScores(outputs[:, 0], rows.ranks, rows.group)


def _attribute_scores(rows, outputs, attributes):
    if attributes is None:
        raise ValueError("an attribute model needs the attribute schema (schema=...)")
    if outputs.shape[-1] != len(attributes.names):
        raise ValueError(f"the model has {outputs.shape[-1]} outputs, but the attribute "
                         f"schema has {len(attributes.names)} attributes")
    values = rows.batch["attributes"]
    present = ~torch.isnan(values)
    targets = (values.nan_to_num(0.0) - attributes.min) / attributes.scale
    return AttributeScores(outputs, targets, present, attributes.names, attributes.scale)


def _chosen_and_rejected(rows):
    return rows.slot == 0, rows.slot == 1


def _by_label(rows):
    labels = rows.batch["labels"][rows.group]
    return labels, ~labels


def _best_and_worst_ranked(rows):
    ranks, group = rows.ranks, rows.group
    n = int(group.max()) + 1
    top = torch.full((n,), torch.iinfo(ranks.dtype).max, dtype=ranks.dtype,
                     device=ranks.device).scatter_reduce(0, group, ranks, "amin")
    bottom = torch.full_like(top, torch.iinfo(ranks.dtype).min).scatter_reduce(
        0, group, ranks, "amax")
    return ranks == top[group], ranks == bottom[group]


PREFERENCE_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                      "rewards/accuracies")


@dataclass(frozen=True)
class FormatSpec:
    """What prefopt does differently for one batch format."""

    fields: tuple[str, ...]  # the record's fields (TRL's names where TRL has the format)
    # `prefopt-train` feeds it to offline objectives (prompts go to the online loop).
    fed: bool
    # Loss input of an objective on log-probs; None where the offline module feeds none.
    logps: LogpsBuilder | None = None
    # Loss input of a reward model (needs().reward_model); None: no reward model is trained
    # on the format.
    scores: ScoresBuilder | None = None
    # Row masks of the preferred and dispreferred completions, for `logps/chosen` and
    # `logps/rejected`; None: the rows are not ranked, `logps/response` is logged instead.
    best_and_worst: Callable[[Rows], tuple[torch.Tensor, torch.Tensor]] | None = None
    # The module can add kl_ratio, from mismatched (prompt_i, completion_i+1) rows.
    mismatched_pairs: bool = False
    # Shared metrics an objective of the format must log (the conformance kit checks them).
    # Unpaired: a batch may lack a class, and with it chosen/rejected rewards and margins.
    required_metrics: tuple[str, ...] = ()
    # Where a plugin finds a function that computes them.
    metrics_helper: str = ""

    @property
    def attributed(self) -> bool:
        """Records carry attributes: the run needs their schema."""
        return "attributes" in self.fields


FORMATS: dict[BatchFormat, FormatSpec] = {
    BatchFormat.PAIRWISE: FormatSpec(
        ("prompt", "chosen", "rejected"), fed=True, logps=_pairwise_logps,
        scores=_pairwise_scores, best_and_worst=_chosen_and_rejected,
        required_metrics=PREFERENCE_METRICS,
        metrics_helper="prefopt.objective.preference_metrics"),
    BatchFormat.UNPAIRED: FormatSpec(
        ("prompt", "completion", "label"), fed=True, logps=_unpaired_logps,
        best_and_worst=_by_label, mismatched_pairs=True,
        required_metrics=("rewards/accuracies",)),
    BatchFormat.RANKED: FormatSpec(
        ("prompt", "completions", "ranks"), fed=True, logps=_ranked_logps,
        scores=_ranked_scores, best_and_worst=_best_and_worst_ranked,
        required_metrics=PREFERENCE_METRICS,
        metrics_helper="prefopt.plugins.kwise.ranking_metrics"),
    BatchFormat.ATTRIBUTED: FormatSpec(
        ("prompt", "response", "attributes"), fed=True, logps=_response_logps,
        scores=_attribute_scores),
    BatchFormat.PROMPTS: FormatSpec(("prompt",), fed=False),
}

FED_FORMATS = tuple(fmt for fmt, spec in FORMATS.items() if spec.fed)


def unfeedable(objective: Objective) -> str | None:
    """Why the offline module cannot serve `objective` (None if it can): read once, before
    training, by `prefopt-train` and by the conformance kit."""
    fmt, needs = objective.batch_format, objective.needs()
    spec = FORMATS[fmt]
    if not spec.fed:
        return (f"it consumes {fmt.value} records; prefopt-train feeds "
                f"{', '.join(f.value for f in FED_FORMATS)} records to offline objectives")
    if needs.reward_model and spec.scores is None:
        scored = [f.value for f, s in FORMATS.items() if s.scores is not None]
        return (f"it trains a reward model on {fmt.value} records; reward models are trained "
                f"on {', '.join(scored)} records")
    if needs.mismatched_pairs and not spec.mismatched_pairs:
        carried = [f.value for f, s in FORMATS.items() if s.mismatched_pairs]
        return (f"it asks for mismatched_pairs, which only {', '.join(carried)} batches "
                "carry")
    if needs.mismatched_pairs and not needs.reference:
        return ("it asks for mismatched_pairs (kl_ratio, a mean of log π/π_ref) without a "
                "reference model (needs().reference)")
    return None
