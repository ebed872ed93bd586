"""Prompt-only data for online objectives: records {prompt} -> token ids -> batches.

A batch is the prompts' texts (what a reward function reads) and their token ids rendered
as training renders prompts (chat template, generation prompt, the prompt truncation
rule), which is what the policy samples from.

A record's other fields (a gold `answer`, a test case) ride along with its prompt: the
prompt text in a batch is a `FieldedPrompt` (a str) or `FieldedMessages` (a list of chat
messages), equal to the record's prompt and carrying `.fields` (a dict) and `.where`
(the record's place, for messages). The rollout passes prompt objects through unchanged,
so the reward source finds each sample's fields on its prompt
(`prefopt.online.rewards`: they reach reward functions as keyword arguments) without any
other code carrying them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from prefopt.data.datamodule import DataConfig, load_sources
from prefopt.data.records import Text
from prefopt.data.sampler import ResumableSampler
from prefopt.data.tokenize import DataReport, Encoder

log = logging.getLogger(__name__)


class FieldedPrompt(str):
    """A text prompt that carries its record's other fields."""

    fields: dict[str, Any]
    where: str


class FieldedMessages(list):
    """A chat prompt (a list of messages) that carries its record's other fields."""

    fields: dict[str, Any]
    where: str


def with_fields(text: Text, fields: dict[str, Any], where: str) -> Text:
    """`text` as a FieldedPrompt / FieldedMessages carrying `fields` and `where`."""
    out = FieldedPrompt(text) if isinstance(text, str) else FieldedMessages(text)
    out.fields, out.where = dict(fields), where
    return out


def prompt_fields(prompt: Text) -> dict[str, Any]:
    """The record fields a prompt carries ({} for a plain string or list)."""
    return getattr(prompt, "fields", {})


@dataclass(frozen=True)
class EncodedPrompt:
    text: Text
    ids: list[int]
    where: str


def collate_prompts(items: list[EncodedPrompt]) -> dict[str, list]:
    return {"prompts": [item.text for item in items], "prompt_ids": [item.ids for item in items]}


class PromptDataModule(pl.LightningDataModule):
    """Train and val prompts; `max_new_tokens` is the room each needs for its completion."""

    fmt = "prompts"

    def __init__(self, cfg: DataConfig, tokenizer, max_new_tokens: int, seed: int = 0):
        super().__init__()
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.max_new_tokens = max_new_tokens
        self.groups: dict[str, list[EncodedPrompt]] = {}
        self.reports: dict[str, DataReport] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.groups:
            return
        encoder = Encoder(self.tokenizer, self.cfg)
        loaded = load_sources(self.cfg, "prompts", self.seed)
        for name, records in loaded.splits.items():
            ids = encoder.prompt_ids([r.prompt for r in records])
            report = DataReport(records=len(records), prompt_lengths=[len(p) for p in ids])
            kept = []
            for record, prompt in zip(records, ids):
                if len(prompt) + self.max_new_tokens > self.cfg.max_length:
                    # The declared rule for a prompt that leaves no room for a completion.
                    rule = self.cfg.on_overlong_prompt.value
                    if rule == "error":
                        raise ValueError(
                            f"{record.where}: field 'prompt': {len(prompt)} tokens leave no "
                            f"room for rollout.max_new_tokens={self.max_new_tokens} within "
                            f"data.max_length={self.cfg.max_length}")
                    if rule == "skip":
                        report.skipped["prompt leaves no room for the completion"] += 1
                        continue
                    prompt = encoder._cut_prompt(prompt, self.cfg.max_length - self.max_new_tokens)
                    report.truncated["prompt"] += 1
                text = with_fields(record.prompt, dict(record.extra), record.where)
                kept.append(EncodedPrompt(text, prompt, record.where))
            report.kept = len(kept)
            report.sources = loaded.sources.get(name)  # data_report.json lists them
            if not kept:
                raise ValueError(f"no usable {name} prompts: {report.summary()}")
            self.groups[name], self.reports[name] = kept, report
            log.info("data %s: %s", name, report.summary())

    def train_dataloader(self) -> DataLoader:
        sampler = ResumableSampler.for_trainer(self.trainer, len(self.groups["train"]),
                                               self.seed, self.cfg.shuffle, self.cfg.batch_size)
        return DataLoader(self.groups["train"], batch_size=self.cfg.batch_size, sampler=sampler,
                          collate_fn=collate_prompts)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.groups["val"], batch_size=self.cfg.val_batch_size or
                          self.cfg.batch_size, collate_fn=collate_prompts)
