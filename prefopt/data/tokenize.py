"""Tokenising preference pairs: chat template, prompt/completion split, truncation rules.

A pair becomes three token lists: the prompt (its tokens are context, never trained on)
and the two completions. With a chat template, a string record is the conversation
[user: prompt] -> [assistant: completion]; message records are used as they are. The
completion's tokens are the template's rendering of the whole conversation minus the
rendering of the prompt with the generation prompt, as TRL does.

Declared rules, each applied and counted in a `DataReport`:
- a prompt longer than `max_prompt_length` is cut on `truncation_side`;
- completions are cut at the end so that prompt + completion fits `max_length`;
- `on_overlong_prompt`: a prompt that leaves no room for any completion token
  (error | skip | truncate: cut it to `max_prompt_length`, or to max_length // 2);
- `on_empty_completion`: a chosen or rejected completion with no text (error | skip);
- `on_identical_pair`: chosen and rejected the same, as text or after truncation, which
  carries no preference signal (error | skip | keep).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from prefopt.data.records import PairwiseRecord, RecordError, Text


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
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


@dataclass
class DataReport:
    """What the rules did to one split; written to the run directory and the log."""

    records: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"records": self.records, "kept": self.kept, "skipped": dict(self.skipped),
                "truncated": dict(self.truncated)}

    def summary(self) -> str:
        parts = [f"{self.kept}/{self.records} pairs kept"]
        parts += [f"skipped {n} ({why})" for why, n in sorted(self.skipped.items())]
        parts += [f"truncated {n} ({what})" for what, n in sorted(self.truncated.items())]
        return ", ".join(parts)


def _is_empty(text: Text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return all(not m["content"].strip() for m in text)


class PairEncoder:
    """Turns `PairwiseRecord`s into `EncodedPair`s under a `TokenizeConfig`."""

    def __init__(self, tokenizer, cfg: TokenizeConfig):
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
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    # -- rendering ------------------------------------------------------------------------
    def _ids(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _render(self, record: PairwiseRecord, completion: Text) -> tuple[str, str]:
        """(prompt text, completion text) of one side of the pair."""
        if self._uses_template(record):
            if not self.has_template:
                raise RecordError(record.where, "the tokenizer has no chat template; set "
                                  "data.chat_template=false for plain-string records", "prompt")
            prompt_msgs = record.prompt if record.conversational else \
                [{"role": "user", "content": record.prompt}]
            answer_msgs = completion if record.conversational else \
                [{"role": "assistant", "content": completion}]
            apply = self.tokenizer.apply_chat_template
            prompt_text = apply(prompt_msgs, add_generation_prompt=True, tokenize=False)
            full_text = apply(prompt_msgs + answer_msgs, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise RecordError(record.where, "the chat template renders the prompt "
                                  "differently once a completion follows it", "prompt")
            return prompt_text, full_text[len(prompt_text):]
        return record.prompt, completion + (self.tokenizer.eos_token or "")

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

    def _cut_prompt(self, prompt: list[int], limit: int) -> list[int]:
        return prompt[-limit:] if self.cfg.truncation_side == Side.left else prompt[:limit]

    def _uses_template(self, record: PairwiseRecord) -> bool:
        return record.conversational or self.cfg.chat_template

    def encode(self, record: PairwiseRecord, report: DataReport) -> EncodedPair | None:
        cfg, where = self.cfg, record.where
        report.records += 1
        for side in ("chosen", "rejected"):
            if _is_empty(getattr(record, side)) and \
                    self._apply(cfg.on_empty_completion, "empty completion", where, side, report):
                return None
        if record.chosen == record.rejected and \
                self._apply(cfg.on_identical_pair, "identical pair", where, "rejected", report):
            return None

        prompt_text, chosen_text = self._render(record, record.chosen)
        _, rejected_text = self._render(record, record.rejected)
        # Chat templates write their own BOS; plain text gets the tokenizer's specials.
        prompt = self._ids(prompt_text, special=not self._uses_template(record))
        chosen, rejected = self._ids(chosen_text, False), self._ids(rejected_text, False)

        if cfg.max_prompt_length is not None and len(prompt) > cfg.max_prompt_length:
            prompt = self._cut_prompt(prompt, cfg.max_prompt_length)
            report.truncated["prompt"] += 1
        if len(prompt) >= cfg.max_length:
            if self._apply(cfg.on_overlong_prompt, "overlong prompt", where, "prompt", report):
                return None
            prompt = self._cut_prompt(prompt, cfg.max_prompt_length or cfg.max_length // 2)
            report.truncated["prompt"] += 1
        room = cfg.max_length - len(prompt)
        if len(chosen) > room or len(rejected) > room:
            chosen, rejected = chosen[:room], rejected[:room]
            report.truncated["completion"] += 1
            if chosen == rejected and \
                    self._apply(cfg.on_identical_pair, "identical pair", where, "rejected", report):
                return None
        report.kept += 1
        return EncodedPair(prompt, chosen, rejected)

    def encode_all(self, records: list[PairwiseRecord]) -> tuple[list[EncodedPair], DataReport]:
        report = DataReport()
        encoded = [self.encode(r, report) for r in records]
        return [e for e in encoded if e is not None], report
