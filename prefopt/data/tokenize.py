"""Tokenising records: chat template, prompt/completion split, truncation rules.

A record becomes token lists: the prompt (its tokens are context, never trained on) and
its completions (two for a pair, one for an unpaired record, K for a ranking). With a chat
template, a string record is the conversation
[user: prompt] -> [assistant: completion]; message records are used as they are. The
completion's tokens are the template's rendering of the whole conversation minus the
rendering of the prompt with the generation prompt, as TRL does.

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
import math
from collections import Counter
from dataclasses import dataclass, field

from prefopt.data.records import Record, RecordError, Text

ATTRIBUTE_LINE_END = "\n"


class Rule(str, enum.Enum):
    error = "error"
    skip = "skip"
    truncate = "truncate"
    keep = "keep"


class Side(str, enum.Enum):
    left = "left"  # drop the start, keep the end (nearest the answer)
    right = "right"


@dataclass
class TokenizeConfig:
    max_length: int = 64
    """Longest prompt + completion, in tokens."""
    max_prompt_length: int | None = None
    """Longest prompt, in tokens; empty: only `max_length` limits it."""
    truncation_side: Side = Side.left
    """Which end of an over-long prompt is cut."""
    chat_template: bool = True
    """Render string records with the tokenizer's chat template (message records always are)."""
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


@dataclass
class DataReport:
    """What the rules did to one split; written to the run directory and the log."""

    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
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

    def as_dict(self) -> dict:
        report = {"records": self.records, "kept": self.kept, "skipped": dict(self.skipped),
                  "truncated": dict(self.truncated), "unknown_tokens": self.unknown_tokens,
                  "unknown_characters": dict(self.unknown_characters.most_common(20))}
        if self.no_ordered_pair is not None:
            report["no_ordered_pair"] = self.no_ordered_pair
        return report

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.records} records kept"]
        parts += [f"skipped {n} ({why})" for why, n in sorted(self.skipped.items())]
        parts += [f"truncated {n} ({what})" for what, n in sorted(self.truncated.items())]
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


class Encoder:
    """Turns `Record`s into `EncodedGroup`s under a `TokenizeConfig`."""

    def __init__(self, tokenizer, cfg: TokenizeConfig, schema=None, condition: bool = True):
        """`schema` (an AttributeSchema) checks and serialises attributed records; with
        `condition=False` they are rendered without their attribute line."""
        if cfg.max_prompt_length is not None and cfg.max_prompt_length >= cfg.max_length:
            raise ValueError(f"data.max_prompt_length ({cfg.max_prompt_length}) must be below "
                             f"data.max_length ({cfg.max_length})")
        allowed = {"on_overlong_prompt": {Rule.error, Rule.skip, Rule.truncate},
                   "on_empty_completion": {Rule.error, Rule.skip, Rule.keep},
                   "on_identical_pair": {Rule.error, Rule.skip, Rule.keep}}
        for name, rules in allowed.items():
            if Rule(getattr(cfg, name)) not in rules:
                raise ValueError(f"data.{name} must be one of "
                                 f"{sorted(r.value for r in rules)}, got {getattr(cfg, name)}")
        self.tokenizer, self.cfg = tokenizer, cfg
        self.schema, self.condition = schema, condition
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

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

    def _render(self, record: Record) -> tuple[str, list[str]]:
        """(prompt text, completion texts); completions exclude the prompt's rendering."""
        prefix = self._prefix(record)
        if not self._uses_template(record):
            eos = self.tokenizer.eos_token or ""
            return record.prompt + prefix, [c + eos for c in record.completions]
        if not self.has_template:
            raise RecordError(record.where, "the tokenizer has no chat template; set "
                              "data.chat_template=false for plain-string records", "prompt")
        apply = self.tokenizer.apply_chat_template
        prompt_msgs = record.prompt if record.conversational else \
            [{"role": "user", "content": record.prompt}]
        prompt_text = apply(prompt_msgs, add_generation_prompt=True, tokenize=False) + prefix
        completions = []
        for i, completion in enumerate(record.completions):
            answer_msgs = completion if record.conversational else \
                [{"role": "assistant", "content": completion}]
            if prefix:  # the attribute line opens the (first) assistant message
                answer_msgs = [{**answer_msgs[0], "content": prefix + answer_msgs[0]["content"]},
                               *answer_msgs[1:]]
            full_text = apply(prompt_msgs + answer_msgs, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise RecordError(record.where, "the chat template renders the prompt "
                                  "differently once a completion follows it",
                                  record.completion_field(i))
            completions.append(full_text[len(prompt_text):])
        return prompt_text, completions

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
            completions = [c[:room] for c in completions]
            report.truncated["completion"] += 1
            if self._identical(record, completions, report):
                return None
        return EncodedGroup(prompt, tuple(completions), label=record.label, ranks=record.ranks,
                            margin=record.margin)

    def _attributed(self, record: Record, group: EncodedGroup, bare: list[int]
                    ) -> EncodedGroup:
        values = self._values(record)
        if len(bare) > len(group.prompt):  # cut like the prompt was (the bare one is shorter)
            bare = self._cut_prompt(bare, len(group.prompt))
        return dataclasses.replace(
            group, attributes=tuple(values.get(n, math.nan) for n in self.schema.names),
            bare_prompt=bare if self.condition else None)

    def encode_all(self, records: list[Record]) -> tuple[list[EncodedGroup], DataReport]:
        """Encode in order; returns the kept groups and the report of what the rules did."""
        report = DataReport(records=len(records))
        admitted = [r for r in records if self._admissible(r, report)]
        texts = [self._render(r) for r in admitted]
        # Batched calls: the Rust tokenizer is far faster on lists than one text at a time.
        # Chat templates write their own BOS; plain-text prompts get the tokenizer's.
        prompts = self._batch_ids([t[0] for t in texts],
                                  [not self._uses_template(r) for r in admitted], report)
        flat = [c for t in texts for c in t[1]]
        flat_ids = iter(self._batch_ids(flat, [False] * len(flat), report))
        completions = [[next(flat_ids) for _ in t[1]] for t in texts]
        groups = [self._fit(*row, report) for row in zip(admitted, prompts, completions)]
        if admitted and admitted[0].kind == "attributed":
            bare = self._batch_ids([self._bare_text(r) for r in admitted],
                                   [not self._uses_template(r) for r in admitted])
            groups = [g and self._attributed(r, g, b) for r, g, b in zip(admitted, groups, bare)]
        kept = [g for g in groups if g is not None]
        report.kept = len(kept)
        if any(g.ranks is not None for g in kept):
            report.no_ordered_pair = sum(len(set(g.ranks)) < 2 for g in kept)
        return kept, report

    def _bare_text(self, record: Record) -> str:
        """The prompt's rendering with an empty attribute line."""
        return self._render(dataclasses.replace(record, attributes=()))[0]

    def prompt_ids(self, prompts: list[Text], attributes: list[dict] | None = None
                   ) -> list[list[int]]:
        """Token ids of prompts as training renders them (chat template and generation
        prompt included, the same truncation of over-long prompts), for generation.
        With `attributes` (one {name: value} per prompt; {} for none) the prompts end in
        the attribute line, as a SteerLM policy was trained to read it."""
        if attributes is not None and len(attributes) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(attributes)} attribute sets")
        records = [Record(p, (), f"prompt {i}", kind="unpaired") for i, p in enumerate(prompts)]
        if attributes is not None:
            records = [dataclasses.replace(r, kind="attributed", attributes=tuple(a.items()))
                       for r, a in zip(records, attributes)]
        texts = [self._render(r)[0] for r in records]
        ids = self._batch_ids(texts, [not self._uses_template(r) for r in records])
        limit = self.cfg.max_prompt_length
        return [self._cut_prompt(p, limit) if limit and len(p) > limit else p for p in ids]

    def _batch_ids(self, texts: list[str], specials: list[bool],
                   report: DataReport | None = None) -> list[list[int]]:
        """Token ids, in order; `specials[i]`: add the tokenizer's special tokens (BOS).
        With `report`, unknown tokens (and the characters they cover) are counted there."""
        unk = self.tokenizer.unk_token_id if report is not None else None
        offsets = unk is not None and self.tokenizer.is_fast
        out: list[list[int]] = [[] for _ in texts]
        for flag in (False, True):
            index = [i for i, special in enumerate(specials) if special == flag]
            if index:
                batch = self.tokenizer([texts[i] for i in index], add_special_tokens=flag,
                                       return_offsets_mapping=offsets)
                for k, (i, ids) in enumerate(zip(index, batch["input_ids"])):
                    out[i] = ids
                    if unk is None or unk not in ids:
                        continue
                    spans = batch["offset_mapping"][k] if offsets else [None] * len(ids)
                    for token, span in zip(ids, spans):
                        if token == unk:
                            report.unknown_tokens += 1
                            if span is not None:
                                report.unknown_characters.update(texts[i][span[0]:span[1]])
        return out
