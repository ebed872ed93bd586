"""The Lightning DataModule: records -> encoded pairs -> batches, with train/val splits."""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
from dataclasses import dataclass, field
from typing import Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from prefopt.data import synthetic
from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.data.collate import collate_groups
from prefopt.data.records import PARSERS, Record, RecordError, iter_raw, read_records, unpair
from prefopt.data.sampler import ResumableSampler
from prefopt.data.tokenize import DataReport, EncodedGroup, Encoder, TokenizeConfig
from prefopt.objective import FORMATS, BatchFormat

log = logging.getLogger(__name__)


@dataclass
class DataConfig(TokenizeConfig):
    path: Optional[str] = None
    """JSONL / JSON / Parquet file, a `save_to_disk` folder or a `datasets` name;
    empty: the built-in synthetic task."""
    split: str = "train"
    """Split to train on, for a `datasets` source."""
    val_path: Optional[str] = None
    """Validation records; empty: `val_split` of `path`, or `val_fraction` held out."""
    val_split: Optional[str] = None
    val_fraction: float = 0.05
    unpair: bool = False
    """Read pairwise records and split each into a desirable and an undesirable one
    (for objectives on unpaired records, such as KTO)."""
    batch_size: int = 32
    """Records per micro-batch (a pair is two sequences, a ranking K)."""
    val_batch_size: Optional[int] = None
    shuffle: bool = True
    attributes: Optional[list[AttributeSpec]] = None
    """Attribute schema of attributed records (SteerLM): [{name, min, max, integer,
    steerable}, ...]; empty: the synthetic task's (quality, order, length)."""
    attribute_dropout: float = 0.0
    """Attributed records: the share of training examples shown with an empty attribute
    line, drawn anew every epoch, so the model also answers unconditioned."""
    synthetic: synthetic.SyntheticConfig = field(default_factory=synthetic.SyntheticConfig)


def _held_out(records: list[Record], fraction: float, seed: int, source: str = "data"
              ) -> tuple[list[Record], list[Record]]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    if len(records) < 2:
        raise RecordError(source, f"holds {len(records)} record, and holding out validation "
                          "records (data.val_fraction) leaves none to train on: add "
                          "records, or give validation records in data.val_path=<file>")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(records)))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def load_splits(cfg: DataConfig, fmt: str, seed: int) -> dict[str, list[Record]]:
    """Train and val records in format `fmt`, the one the objective consumes."""
    source = fmt
    if cfg.unpair:
        if fmt != "unpaired":
            raise ValueError(f"data.unpair=true turns pairwise records into unpaired ones, "
                             f"but the objective consumes {fmt} records")
        source = "pairwise"
    if cfg.path is None:
        parse = PARSERS[source]
        loaded = {name: [parse(f"synthetic {name} record {i}", raw) for i, raw in enumerate(rows)]
                  for name, rows in synthetic.splits(cfg.synthetic, source).items()}
    else:
        train = _nonempty(cfg.path, source, _read(cfg.path, source, cfg.split, fmt))
        if cfg.val_path is not None:
            val = _nonempty(cfg.val_path, source,
                            _read(cfg.val_path, source, cfg.val_split or "train", fmt))
        elif cfg.val_split is not None:
            val = _nonempty(cfg.path, source, _read(cfg.path, source, cfg.val_split, fmt))
        else:
            train, val = _held_out(train, cfg.val_fraction, seed, cfg.path)
        loaded = {"train": train, "val": val}
    if cfg.unpair:
        loaded = {name: unpair(records) for name, records in loaded.items()}
    return loaded


_FIELDS = {"pairwise": "{prompt, chosen, rejected}", "unpaired": "{prompt, completion, label}",
           "ranked": "{prompt, completions, ranks}",
           "attributed": "{prompt, response, attributes}", "prompts": "{prompt}"}


# The fields that tell a record's format, checked in this order.
_MARKS = (("pairwise", {"chosen", "rejected"}), ("unpaired", {"completion", "label"}),
          ("ranked", {"completions", "ranks"}), ("ranked", {"answers"}),
          ("attributed", {"response", "attributes"}))


def _format_of(raw) -> str | None:
    """The format a raw record is in, by its fields; None if it has none's."""
    if not isinstance(raw, dict):
        return None
    return next((fmt for fmt, fields in _MARKS if fields <= set(raw)), None)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _read(path: str, source: str, split: str, fmt: str) -> list[Record]:
    """read_records, naming both formats when the file holds records of another format
    than the objective consumes (`fmt`; `source` is what is read: pairwise to unpair)."""
    try:
        return read_records(path, source, split)
    except RecordError as exc:
        try:
            where, first = next(iter_raw(path, split))
        except (RecordError, StopIteration):
            raise exc from None
        found = _format_of(first)
        if found is None or found == source:
            raise
        if found == "pairwise" and fmt == "unpaired":
            fix = "set data.unpair=true to split each pair into a desirable and an " \
                  "undesirable record"
        else:
            fix = (f"convert the data to {source} records, or choose an objective that "
                   f"consumes {found} records (prefopt-plugins lists each one's format)")
        raise RecordError(where, f"the objective consumes {source} records "
                          f"{_FIELDS[source]}, but this is {_a(found)} record "
                          f"{_FIELDS[found]}: {fix}") from None


def _nonempty(path: str, fmt: str, records: list[Record]) -> list[Record]:
    if not records:
        raise RecordError(path, f"holds no records: give a file with {fmt} records "
                          f"{_FIELDS.get(fmt, '')}, one JSON object per line (.jsonl)")
    return records


def attribute_schema(cfg: DataConfig) -> AttributeSchema:
    """The schema of the run's attributed records: `data.attributes`, or the synthetic
    task's when training on it."""
    if cfg.attributes:
        return AttributeSchema(list(cfg.attributes))
    if cfg.path is None:
        return AttributeSchema(synthetic.attribute_specs(cfg.synthetic))
    raise ValueError(f"data.attributes: attributed records from {cfg.path} need an attribute "
                     "schema, e.g. data.attributes='[{name: quality, min: 0, max: 4}]'")


class AttributeDropout(Dataset):
    """Training groups where each example shows an empty attribute line with probability
    `p`. The draw depends on (seed, epoch, index) only, so a resumed run sees the same."""

    def __init__(self, groups: list[EncodedGroup], p: float, seed: int, sampler):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"data.attribute_dropout must be in [0, 1), got {p}")
        self.groups, self.p, self.seed, self.sampler = groups, p, seed, sampler

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> EncodedGroup:
        group = self.groups[index]
        draw = random.Random(f"{self.seed}/{self.sampler.epoch}/{index}").random()
        if draw < self.p:
            return dataclasses.replace(group, prompt=group.bare_prompt)
        return group


class PreferenceDataModule(pl.LightningDataModule):
    """Records of the objective's format -> encoded groups -> batches."""

    def __init__(self, cfg: DataConfig, tokenizer, fmt: str = "pairwise",
                 mismatched: bool = False, seed: int = 0, condition: bool = True):
        """`condition`: attributed records carry their attribute line (a SteerLM policy);
        False renders them without it (an attribute model, which predicts the values)."""
        super().__init__()
        if mismatched and cfg.batch_size < 2:
            raise ValueError("this objective estimates its KL reference point from mismatched "
                             "prompt/completion pairs inside a batch, which a batch of 1 "
                             f"cannot form: set data.batch_size >= 2 (got {cfg.batch_size})")
        self.cfg, self.tokenizer, self.fmt, self.seed = cfg, tokenizer, fmt, seed
        self.mismatched, self.condition = mismatched, condition
        self.schema = attribute_schema(cfg) if FORMATS[BatchFormat(fmt)].attributed else None
        self.groups: dict[str, list[EncodedGroup]] = {}
        self.reports: dict[str, DataReport] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.groups:
            return  # validate-then-fit calls setup twice; the data are the same
        encoder = Encoder(self.tokenizer, self.cfg, self.schema, self.condition)
        for name, records in load_splits(self.cfg, self.fmt, self.seed).items():
            groups, report = encoder.encode_all(records)
            if len(groups) < (2 if self.mismatched else 1):
                source = self._source(name)
                raise RecordError(source, f"too few usable {name} records "
                                  f"({report.summary()}): "
                                  + ("add records, or relax the data.on_* rules or "
                                     "data.max_length that skipped them" if source != "synthetic"
                                     else "raise data.synthetic.n_" + name))
            self.groups[name], self.reports[name] = groups, report
            log.info("data %s: %s", name, report.summary())

    def _source(self, name: str) -> str:
        """Where the records of split `name` come from, for messages."""
        if self.cfg.path is None:
            return "synthetic"
        if name == "val" and self.cfg.val_path is not None:
            return self.cfg.val_path
        return self.cfg.path

    def _loader(self, name: str, batch_size: int, sampler=None) -> DataLoader:
        collate = functools.partial(collate_groups, pad_id=self.tokenizer.pad_token_id,
                                    mismatched=self.mismatched)
        # Mismatched pairs need two records in every batch: never leave a batch of one.
        drop_last = self.mismatched and len(self.groups[name]) % batch_size == 1
        dataset = self.groups[name]
        if name == "train" and self.cfg.attribute_dropout and self.schema is not None \
                and self.condition:
            dataset = AttributeDropout(dataset, self.cfg.attribute_dropout, self.seed, sampler)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          collate_fn=collate, drop_last=drop_last)

    def train_dataloader(self) -> DataLoader:
        # self.trainer: set by Lightning; None when used on its own.
        sampler = ResumableSampler.for_trainer(self.trainer, len(self.groups["train"]),
                                               self.seed, self.cfg.shuffle, self.cfg.batch_size)
        return self._loader("train", self.cfg.batch_size, sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.cfg.val_batch_size or self.cfg.batch_size)
