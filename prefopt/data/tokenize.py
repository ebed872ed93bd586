"""Tokenising records: chat template, prompt/completion split, truncation rules.

A record becomes token lists: the prompt (its tokens are context, never trained on) and
its completions (two for a pair, one for an unpaired record, K for a ranking). With a chat
template, a string record is the conversation [user: prompt] -> [assistant: completion];
message records are used as they are. Without one, the text is prompt + completion + EOS
and the tokenizer adds its own special tokens (BOS).

How the completion's tokens are found (`completion_tokens`):
- joint (the default, TRL 1.16's rule): the prompt is tokenised alone (with the generation
  prompt) and each prompt + completion as a whole. The prompt is the longest common prefix
  of the prompt's ids and every prompt + completion's ids (the minimum over the
  completions); each completion is the rest of its prompt + completion ids. A SentencePiece
  completion that follows a control token (`[/INST]Thank`) so starts `Thank`, as the whole
  conversation tokenises, not `▁Thank`.
- separate: each completion's text (the whole rendering minus the prompt's) is tokenised
  alone: the tokens a model emits when it generates after the prompt.
A prompt whose own tokens are not a prefix of prompt + completion (tokens merging across
the boundary, or a template that renders the prompt alone differently) is counted in
`DataReport.prompt_boundary_merges`.

Attributed records (SteerLM) are rendered with their attribute line at the start of the
assistant turn, `quality:4,order:1,length:3` + newline (prefopt.data.attributes): the line is
context, the response after it is the completion. The same prompt with an empty attribute
line (`bare_prompt`) is kept for attribute dropout and unconditioned generation. An
encoder built with `condition=False` (the attribute model's) renders no attribute line.

Declared rules, each applied and counted in a `DataReport`:
- a prompt longer than `max_prompt_length` is cut on `truncation_side`;
- completions are cut at the end so that prompt + completion fits `max_length`;
- `on_overlong_prompt`: a prompt that leaves no room for any completion token
  (error | skip | truncate: cut it to `max_prompt_length`, or to max_length // 2);
- `on_empty_completion`: a completion with no text (error | skip | keep);
- `on_identical_pair`: two completions with different preference (chosen and rejected, or
  different ranks) that are the same, as text or after truncation: no signal, or a
  contradiction (error | skip | keep).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

from prefopt.data.records import Record, RecordError, Text

log = logging.getLogger(__name__)

ATTRIBUTE_LINE_END = "\n"
PROMPT_WITHOUT_TOKENS = "prompt without tokens"  # DataReport.skipped reason


class Rule(str, enum.Enum):
    error = "error"
    skip = "skip"
    truncate = "truncate"
    keep = "keep"


class Side(str, enum.Enum):
    left = "left"  # drop the start, keep the end (nearest the answer)
    right = "right"


class CompletionTokens(str, enum.Enum):
    joint = "joint"  # cut from prompt + completion tokenised as a whole (TRL 1.16)
    separate = "separate"  # the completion's text tokenised alone (what generation emits)


@dataclass
class TokenizeConfig:
    max_length: int = 64
    """Longest prompt + completion, in tokens."""
    max_prompt_length: int | None = None
    """Longest prompt, in tokens; empty: only `max_length` limits it. One not below
    `max_length` is taken as max_length // 2, with a warning."""
    truncation_side: Side = Side.left
    """Which end of an over-long prompt is cut."""
    chat_template: bool = True
    """Render string records with the tokenizer's chat template (message records always
    are). TRL templates only message records: false reproduces it for string records."""
    completion_tokens: CompletionTokens = CompletionTokens.joint
    """joint: tokenise prompt + completion as a whole and split at the common prefix with
    the prompt's tokens (TRL 1.16's rule: the tokens of the whole conversation); separate:
    tokenise each completion's text alone (the tokens generation produces after the prompt,
    as online objectives sample them)."""
    on_overlong_prompt: Rule = Rule.skip
    on_empty_completion: Rule = Rule.skip
    on_identical_pair: Rule = Rule.skip


@dataclass(frozen=True)
class EncodedGroup:
    """A tokenised record: its prompt, its completions, and the record's preference data."""

    prompt: list[int]
    completions: tuple[list[int], ...]
    label: bool | None = None
    ranks: tuple[int, ...] | None = None
    margin: float | None = None
    ref_logps: tuple[float, ...] | None = None  # cached Σ log π_ref per completion
    # Attributed records: values in schema order (NaN where not given), and the prompt
    # with an empty attribute line (attribute dropout).
    attributes: tuple[float, ...] | None = None
    bare_prompt: list[int] | None = None

    @property
    def chosen(self) -> list[int]:  # pairwise records
        return self.completions[0]

    @property
    def rejected(self) -> list[int]:
        return self.completions[1]


def length_stats(lengths: list[int]) -> dict | None:
    """mean (to 2 decimals), p50, p95 and max of token counts; percentiles by nearest rank
    (the value at sorted position ceil(p/100 · n), counted from 1). None for no values."""
    if not lengths:
        return None
    ordered = sorted(lengths)

    def rank(p: int) -> int:
        return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]

    return {"mean": round(sum(ordered) / len(ordered), 2), "p50": rank(50), "p95": rank(95),
            "max": ordered[-1]}


@dataclass
class DataReport:
    """What the rules did to one split; written to the run directory and the log."""

    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    # Truncations by record field: prompt, chosen, rejected, completion, completions (a
    # ranking's, each truncated completion counted), response.
    truncated: Counter = field(default_factory=Counter)
    # Kept records whose completions all share one rank: they hold no ordered pair, so
    # they train the loss (ties) but have no `rewards/accuracies`. None where records carry
    # no ranks (unpaired, attributed, prompts); always 0 for pairs.
    no_ordered_pair: int | None = None
    # Tokens the tokenizer could only map to its unknown token, and (fast tokenizers) the
    # characters they cover: text the model cannot see (e.g. a character-level vocabulary
    # without "é"). Byte-level tokenizers have no unknown token and count none.
    unknown_tokens: int = 0
    unknown_characters: Counter = field(default_factory=Counter)
    # Records whose prompt tokens alone are not a prefix of prompt + completion (joint
    # tokenisation): the prompt ends earlier in training than in generation.
    prompt_boundary_merges: int = 0
    # Token counts of the tokenised records, before truncation: one per prompt, one per
    # completion.
    prompt_lengths: list[int] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    # The data files a split was drawn from (a mixture), where the loader says.
    sources: list[dict] | None = None

    def as_dict(self) -> dict:
        report = {"records": self.records, "kept": self.kept, "skipped": dict(self.skipped),
                  "truncated": dict(self.truncated), "unknown_tokens": self.unknown_tokens,
                  "unknown_characters": dict(self.unknown_characters.most_common(20)),
                  "prompt_boundary_merges": self.prompt_boundary_merges,
                  "lengths": {"prompt": length_stats(self.prompt_lengths),
                              "completion": length_stats(self.completion_lengths)}}
        if self.no_ordered_pair is not None:
            report["no_ordered_pair"] = self.no_ordered_pair
        if self.sources is not None:
            report["sources"] = self.sources
        return report

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.records} records kept"]
        parts += [f"skipped {n} ({why})" for why, n in sorted(self.skipped.items())]
        if self.truncated:
            parts.append("truncated " + " ".join(
                f"{what} {n}" for what, n in sorted(self.truncated.items())))
        for name, lengths in (("prompt", self.prompt_lengths),
                              ("completion", self.completion_lengths)):
            stats = length_stats(lengths)
            if stats:
                parts.append(f"{name} tokens mean {stats['mean']:.1f} p50 {stats['p50']} "
                             f"p95 {stats['p95']} max {stats['max']}")
        if self.prompt_boundary_merges:
            parts.append(f"{self.prompt_boundary_merges} prompts merge into the completion")
        if self.unknown_tokens:
            shown = "".join(c for c, _ in self.unknown_characters.most_common(10))
            parts.append(f"{self.unknown_tokens} unknown tokens"
                         + (f" (characters {shown!r})" if shown else ""))
        if self.no_ordered_pair:
            parts.append(f"{self.no_ordered_pair} kept with no ordered pair (all ranks equal: "
                         "left out of rewards/accuracies)")
        return ", ".join(parts)


def _is_empty(text: Text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return all(not m["content"].strip() for m in text)


def _conflicting(record: Record, i: int, j: int) -> bool:
    """Completions i and j are meant to be preferred differently."""
    return record.ranks is not None and record.ranks[i] != record.ranks[j]


def _report_field(record: Record, index: int) -> str:
    """The field a completion's truncation is counted under: a ranking's `completions[i]`
    all count under `completions`."""
    return record.completion_field(index).split("[")[0]


def common_prefix_length(ids: list[int], other: list[int]) -> int:
    """How many leading tokens two id lists share."""
    shorter = min(len(ids), len(other))
    if ids[:shorter] == other[:shorter]:  # the usual case, compared in C
        return shorter
    n = 0
    for a, b in zip(ids, other):
        if a != b:
            break
        n += 1
    return n


@dataclass(frozen=True)
class _Rendered:
    """A record as text: the prompt, each prompt + completion, and each completion alone
    (None where the template renders the prompt differently once a completion follows)."""

    prompt: str
    wholes: list[str]
    completions: list[str | None]
    special_tokens: bool  # plain text: the tokenizer adds its special tokens (BOS)


@dataclass
class _Tokenised:
    """Token ids of one text, and the (start, end) characters of each where asked for."""

    ids: list[int]
    spans: list[tuple[int, int]] | None


@functools.lru_cache(maxsize=None)
def _warn_clamped_prompt_limit(max_prompt_length: int, max_length: int) -> None:
    """Once per pair of values in a process: a run builds an encoder for each split and
    for generation, and one warning says it for all of them."""
    log.warning("data.max_prompt_length (%d) is not below data.max_length (%d): prompts "
                "are limited to max_length // 2 = %d tokens instead; set "
                "data.max_prompt_length=<n> below data.max_length to choose",
                max_prompt_length, max_length, max_length // 2)


class Encoder:
    """Turns `Record`s into `EncodedGroup`s under a `TokenizeConfig`."""

    def __init__(self, tokenizer, cfg: TokenizeConfig, schema=None, condition: bool = True):
        """`schema` (an AttributeSchema) checks and serialises attributed records; with
        `condition=False` they are rendered without their attribute line."""
        if cfg.max_length < 2:
            raise ValueError(f"data.max_length must be at least 2 tokens (a prompt token and a "
                             f"completion token), got {cfg.max_length}")
        if cfg.max_prompt_length is not None and cfg.max_prompt_length >= cfg.max_length:
            # A preset's prompt limit under a smaller max_length set on the command line.
            _warn_clamped_prompt_limit(cfg.max_prompt_length, cfg.max_length)
            cfg = dataclasses.replace(cfg, max_prompt_length=cfg.max_length // 2)
        allowed = {"on_overlong_prompt": {Rule.error, Rule.skip, Rule.truncate},
                   "on_empty_completion": {Rule.error, Rule.skip, Rule.keep},
                   "on_identical_pair": {Rule.error, Rule.skip, Rule.keep}}
        for name, rules in allowed.items():
            if Rule(getattr(cfg, name)) not in rules:
                raise ValueError(f"data.{name} must be one of "
                                 f"{sorted(r.value for r in rules)}, got {getattr(cfg, name)}")
        try:
            self.joint = CompletionTokens(cfg.completion_tokens) == CompletionTokens.joint
        except ValueError:
            raise ValueError("data.completion_tokens must be one of "
                             f"{[m.value for m in CompletionTokens]}, got "
                             f"{cfg.completion_tokens}") from None
        self.tokenizer, self.cfg = tokenizer, cfg
        self.schema, self.condition = schema, condition
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._warned_merge = False
        # GPT-2-style tokenizers name one token unknown, BOS and EOS at once: a byte-level
        # vocabulary has no real unknown, and the EOS every completion ends in is not text
        # the model cannot see. Such a tokenizer counts no unknown tokens. (An unknown token
        # reused as padding, as Llama setups do, is still counted: padding never enters the
        # tokenised text, so one found there is text the vocabulary lacks.)
        unk = tokenizer.unk_token_id
        self.unk_id = None if unk in (tokenizer.eos_token_id, tokenizer.bos_token_id) else unk

    # -- rendering ------------------------------------------------------------------------
    def _uses_template(self, record: Record) -> bool:
        return record.conversational or self.cfg.chat_template

    def attribute_line(self, values: dict[str, float] | None) -> str:
        """The context that opens the assistant turn: the serialised attributes, newline."""
        return self.schema.serialise(values or {}) + ATTRIBUTE_LINE_END

    def _values(self, record: Record) -> dict[str, float]:
        if self.schema is None:
            raise ValueError("attributed records need an attribute schema (data.attributes)")
        return self.schema.check(dict(record.attributes or ()), record.where)

    def _prefix(self, record: Record) -> str:
        """Text between the generation prompt and the completion: the attribute line."""
        if record.kind != "attributed" or not self.condition:
            return ""
        return self.attribute_line(self._values(record))

    def _conversations(self, record: Record) -> tuple[list[dict], list[list[dict]], str]:
        """(the prompt's messages, each prompt + completion's messages, the text between
        the generation prompt and the completion) of a record rendered with the template."""
        prefix = self._prefix(record)
        prompt_msgs = record.prompt if record.conversational else \
            [{"role": "user", "content": record.prompt}]
        wholes = []
        for completion in record.completions:
            answer_msgs = completion if record.conversational else \
                [{"role": "assistant", "content": completion}]
            if prefix:  # the attribute line opens the (first) assistant message
                answer_msgs = [{**answer_msgs[0], "content": prefix + answer_msgs[0]["content"]},
                               *answer_msgs[1:]]
            wholes.append(prompt_msgs + answer_msgs)
        return prompt_msgs, wholes, prefix

    def _apply_template(self, conversations: list[list[dict]], generation_prompt: bool
                        ) -> list[str]:
        if not conversations:
            return []
        # One call for the lot: the template is looked up and its kwargs built once.
        return self.tokenizer.apply_chat_template(
            conversations, add_generation_prompt=generation_prompt, tokenize=False)

    def _render_one(self, record: Record) -> _Rendered:
        """One record, naming it (and its field) where the chat template refuses it."""
        try:
            return self._render_all([record])[0]
        except RecordError:
            raise
        except Exception as exc:  # noqa: BLE001 - a template raises what its author chose
            prompt_msgs, wholes, _ = self._conversations(record)
            field = "prompt"
            try:
                self._apply_template([prompt_msgs], True)
                for i, whole in enumerate(wholes):
                    field = record.completion_field(i)
                    self._apply_template([whole], False)
            except Exception:  # noqa: BLE001 - the same refusal, now located
                pass
            raise RecordError(record.where, "the tokenizer's chat template cannot render it "
                              f"({type(exc).__name__}: {exc})", field) from exc

    def _render(self, records: list[Record]) -> list[_Rendered]:
        """Each record as text; a record the chat template refuses is named."""
        try:
            return self._render_all(records)
        except RecordError:
            raise
        except Exception:  # noqa: BLE001 - find the record, then say which it is
            for record in records:
                self._render_one(record)
            raise

    def _render_all(self, records: list[Record]) -> list[_Rendered]:
        out: list[_Rendered | None] = [None] * len(records)
        templated = []
        for i, record in enumerate(records):
            if self._uses_template(record):
                if not self.has_template:
                    if record.conversational:  # data.chat_template=false cannot help here
                        raise RecordError(record.where, "message lists need a chat template "
                                          "and the tokenizer has none; set one on the "
                                          "tokenizer (its chat_template), or give the prompt "
                                          "and completions as plain strings", "prompt")
                    raise RecordError(record.where, "the tokenizer has no chat template; set "
                                      "data.chat_template=false for plain-string records",
                                      "prompt")
                templated.append(i)
                continue
            prefix = self._prefix(record)
            eos = self.tokenizer.eos_token or ""
            prompt = record.prompt + prefix
            # A completion that already ends in EOS gets no second one, as in TRL.
            completions = [c if c.endswith(eos) else c + eos for c in record.completions]
            out[i] = _Rendered(prompt, [prompt + c for c in completions], completions, True)
        parts = [self._conversations(records[i]) for i in templated]
        prompts = self._apply_template([prompt_msgs for prompt_msgs, _, _ in parts], True)
        wholes = iter(self._apply_template([w for _, ws, _ in parts for w in ws], False))
        for i, (_, conversations, prefix), prompt in zip(templated, parts, prompts):
            prompt += prefix
            whole = [next(wholes) for _ in conversations]
            out[i] = _Rendered(prompt, whole, [w[len(prompt):] if w.startswith(prompt) else None
                                               for w in whole], False)
        return out

    # -- the rules ------------------------------------------------------------------------
    def _apply(self, rule: Rule, reason: str, where: str, field: str, report: DataReport
               ) -> bool:
        """True to drop the record (skip), False to go on (keep, truncate); raises for error."""
        if rule == Rule.error:
            raise RecordError(where, f"{reason} (rule data.on_{reason.replace(' ', '_')}=error)",
                              field)
        if rule == Rule.skip:
            report.skipped[reason] += 1
            return True
        return False

    def _identical(self, record: Record, completions, report: DataReport) -> bool:
        n = len(completions)
        for i in range(n):
            for j in range(i + 1, n):
                if completions[i] == completions[j] and _conflicting(record, i, j) and \
                        self._apply(self.cfg.on_identical_pair, "identical pair", record.where,
                                    record.completion_field(j), report):
                    return True
        return False

    def _admissible(self, record: Record, report: DataReport) -> bool:
        """The rules that look at the text: empty completions, identical pairs."""
        for i, completion in enumerate(record.completions):
            if _is_empty(completion) and self._apply(
                    self.cfg.on_empty_completion, "empty completion", record.where,
                    record.completion_field(i), report):
                return False
        return not self._identical(record, record.completions, report)

    def _cut_prompt(self, prompt: list[int], limit: int) -> list[int]:
        return prompt[-limit:] if self.cfg.truncation_side == Side.left else prompt[:limit]

    def _fit(self, record: Record, prompt: list[int], completions: list[list[int]],
             report: DataReport) -> EncodedGroup | None:
        """The rules that look at token counts: truncation and over-long prompts."""
        cfg, where = self.cfg, record.where
        if cfg.max_prompt_length is not None and len(prompt) > cfg.max_prompt_length:
            prompt = self._cut_prompt(prompt, cfg.max_prompt_length)
            report.truncated["prompt"] += 1
        if len(prompt) >= cfg.max_length:
            if self._apply(cfg.on_overlong_prompt, "overlong prompt", where, "prompt", report):
                return None
            prompt = self._cut_prompt(prompt, cfg.max_prompt_length or cfg.max_length // 2)
            report.truncated["prompt"] += 1
        room = cfg.max_length - len(prompt)
        if any(len(c) > room for c in completions):
            for i, completion in enumerate(completions):
                if len(completion) > room:
                    report.truncated[_report_field(record, i)] += 1
            completions = [c[:room] for c in completions]
            if self._identical(record, completions, report):
                return None
        return EncodedGroup(prompt, tuple(completions), label=record.label, ranks=record.ranks,
                            margin=record.margin)

    def _attributed(self, record: Record, group: EncodedGroup, bare: list[int] | None
                    ) -> EncodedGroup:
        values = self._values(record)
        if bare is not None and len(bare) > len(group.prompt):
            bare = self._cut_prompt(bare, len(group.prompt))  # cut like the prompt was
        return dataclasses.replace(
            group, attributes=tuple(values.get(n, math.nan) for n in self.schema.names),
            bare_prompt=bare)

    # -- tokenising -----------------------------------------------------------------------
    def encode_all(self, records: list[Record]) -> tuple[list[EncodedGroup], DataReport]:
        """Encode in order; returns the kept groups and the report of what the rules did."""
        report = DataReport(records=len(records))
        admitted = [r for r in records if self._admissible(r, report)]
        rendered = self._render(admitted)
        split = self._split(admitted, rendered, report)
        admitted, split = self._with_prompt_tokens(admitted, split, report)
        for prompt, completions in split:
            report.prompt_lengths.append(len(prompt))
            report.completion_lengths.extend(len(c) for c in completions)
        groups = [self._fit(r, prompt, completions, report)
                  for r, (prompt, completions) in zip(admitted, split)]
        if admitted and admitted[0].kind == "attributed":
            bare: list = [None] * len(admitted)
            if self.condition:  # the prompt with an empty attribute line
                plain = [dataclasses.replace(r, attributes=()) for r in admitted]
                bare = [p for p, _ in self._split(plain, self._render(plain))]
            groups = [g and self._attributed(r, g, b) for r, g, b in zip(admitted, groups, bare)]
        kept = [g for g in groups if g is not None]
        report.kept = len(kept)
        if any(g.ranks is not None for g in kept):
            report.no_ordered_pair = sum(len(set(g.ranks)) < 2 for g in kept)
        return kept, report

    def _with_prompt_tokens(self, records: list[Record], split: list, report: DataReport
                            ) -> tuple[list[Record], list]:
        """Drop records whose prompt has no tokens, counted and warned about: nothing would
        predict their first completion token (it would go unscored), and generation has no
        context to start from. An empty prompt does this under a tokenizer that adds no BOS
        and no chat template (GPT-2)."""
        empty = [i for i, (prompt, _) in enumerate(split) if not prompt]
        if not empty:
            return records, split
        report.skipped[PROMPT_WITHOUT_TOKENS] += len(empty)
        log.warning("%d of %d records skipped (first: %s): the prompt has no tokens, so nothing "
                    "predicts the completion's first token; use a tokenizer that adds a BOS "
                    "token, a chat template (data.chat_template=true), or non-empty prompts "
                    "(counted as skipped '%s' in the data report)", len(empty), len(records),
                    records[empty[0]].where, PROMPT_WITHOUT_TOKENS)
        dropped = set(empty)
        keep = [i for i in range(len(records)) if i not in dropped]
        return [records[i] for i in keep], [split[i] for i in keep]

    def _split(self, records: list[Record], rendered: list[_Rendered],
               report: DataReport | None = None) -> list[tuple[list[int], list[list[int]]]]:
        """(prompt ids, completion ids) per record, by `completion_tokens`; with `report`,
        unknown tokens and prompt boundary merges are counted there."""
        prompts = self._tokenise([r.prompt for r in rendered],
                                 [r.special_tokens for r in rendered], report is not None)
        if report is not None:
            for text, tokens in zip(rendered, prompts):
                self._count_unknown(text.prompt, tokens, 0, report)
        if not self.joint:
            for record, text in zip(records, rendered):
                for i, completion in enumerate(text.completions):
                    if completion is None:
                        raise RecordError(record.where, "the chat template renders the prompt "
                                          "differently once a completion follows it; "
                                          "data.completion_tokens=joint handles such templates",
                                          record.completion_field(i))
            flat = [c for r in rendered for c in r.completions]
            tokens = iter(self._tokenise(flat, [False] * len(flat), report is not None))
            out = []
            for text, prompt in zip(rendered, prompts):
                completions = []
                for completion in text.completions:
                    tokenised = next(tokens)
                    if report is not None:
                        self._count_unknown(completion, tokenised, 0, report)
                    completions.append(tokenised.ids)
                out.append((prompt.ids, completions))
            return out
        flat = [w for r in rendered for w in r.wholes]
        flat_specials = [r.special_tokens for r in rendered for _ in r.wholes]
        wholes = iter(self._tokenise(flat, flat_specials, report is not None))
        out, merged = [], []
        for record, text, prompt in zip(records, rendered, prompts):
            whole = [next(wholes) for _ in text.wholes]
            n = min((common_prefix_length(prompt.ids, w.ids) for w in whole),
                    default=len(prompt.ids))
            if report is not None:
                for string, tokenised in zip(text.wholes, whole):
                    self._count_unknown(string, tokenised, n, report)
                if n < len(prompt.ids):
                    merged.append((record, prompt.ids[n:]))
            out.append((prompt.ids[:n], [w.ids[n:] for w in whole]))
        if merged:
            report.prompt_boundary_merges += len(merged)
            self._warn_merge(merged, len(records))
        return out

    def _warn_merge(self, merged: list[tuple[Record, list[int]]], total: int) -> None:
        if self._warned_merge:
            return
        self._warned_merge = True
        record, tail = merged[0]
        log.warning("%d of %d records: the prompt's tokens alone are not a prefix of prompt + "
                    "completion (tokens merge across the boundary, or the chat template "
                    "renders the prompt alone differently). Training splits at the common "
                    "prefix, so these prompts lose their last tokens (%s: %r) and the "
                    "completion starts with them merged: the model trains on a context that "
                    "differs from the prompt it is given at generation. End prompts on a "
                    "token boundary or use a template that renders the prompt the same way "
                    "alone (counted as prompt_boundary_merges in the data report)",
                    len(merged), total, record.where, self.tokenizer.decode(tail))

    def prompt_ids(self, prompts: list[Text], attributes: list[dict] | None = None
                   ) -> list[list[int]]:
        """Token ids of prompts as training renders them (chat template and generation
        prompt included, the same truncation of over-long prompts), for generation.
        With `attributes` (one {name: value} per prompt; {} for none) the prompts end in
        the attribute line, as a SteerLM policy was trained to read it. They equal the
        prompt of joint tokenisation unless the prompt merges into its completion."""
        if attributes is not None and len(attributes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(attributes)} attribute sets")
        records = [Record(p, (), f"prompt {i}", kind="unpaired") for i, p in enumerate(prompts)]
        if attributes is not None:
            records = [dataclasses.replace(r, kind="attributed", attributes=tuple(a.items()))
                       for r, a in zip(records, attributes)]
        rendered = self._render(records)
        ids = [t.ids for t in self._tokenise([r.prompt for r in rendered],
                                             [r.special_tokens for r in rendered])]
        limit = self.cfg.max_prompt_length
        return [self._cut_prompt(p, limit) if limit and len(p) > limit else p for p in ids]

    def _tokenise(self, texts: list[str], specials: list[bool], spans: bool = False
                  ) -> list[_Tokenised]:
        """Token ids, in order; `specials[i]`: add the tokenizer's special tokens (BOS).
        With `spans` (and a fast tokenizer that has an unknown token), each token's
        characters, to name the text unknown tokens cover."""
        unk = self.unk_id
        offsets = spans and unk is not None and self.tokenizer.is_fast
        out: list[_Tokenised] = [_Tokenised([], None) for _ in texts]
        # Batched calls: the Rust tokenizer is far faster on lists than one text at a time.
        for flag in (False, True):
            index = [i for i, special in enumerate(specials) if special == flag]
            if not index:
                continue
            # Ids only: masks nobody reads cost a third of the call. Spans are asked for
            # again for the few texts holding an unknown token.
            batch = self.tokenizer([texts[i] for i in index], add_special_tokens=flag,
                                   return_attention_mask=False, return_token_type_ids=False)
            for k, i in enumerate(index):
                out[i] = _Tokenised(batch["input_ids"][k], None)
            unknown = [i for i in index if offsets and unk in out[i].ids]
            if unknown:
                again = self.tokenizer([texts[i] for i in unknown], add_special_tokens=flag,
                                       return_offsets_mapping=True, return_attention_mask=False,
                                       return_token_type_ids=False)
                for k, i in enumerate(unknown):
                    out[i] = _Tokenised(again["input_ids"][k], again["offset_mapping"][k])
        return out

    def _count_unknown(self, text: str, tokenised: _Tokenised, start: int,
                       report: DataReport) -> None:
        """Count the unknown tokens of `tokenised` from position `start` on."""
        unk = self.unk_id
        if unk is None or unk not in tokenised.ids[start:]:
            return
        for k in range(start, len(tokenised.ids)):
            if tokenised.ids[k] == unk:
                report.unknown_tokens += 1
                if tokenised.spans is not None:
                    begin, end = tokenised.spans[k]
                    report.unknown_characters.update(text[begin:end])
