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

from prefopt.data import arithmetic, sources, synthetic
from prefopt.data.attributes import AttributeSchema, AttributeSpec
from prefopt.data.collate import collate_groups
from prefopt.data.records import PARSERS, Columns, Record, RecordError, unpair
from prefopt.data.sampler import ResumableSampler
from prefopt.data.tokenize import DataReport, EncodedGroup, Encoder, TokenizeConfig
from prefopt.objective import FORMATS, BatchFormat

log = logging.getLogger(__name__)


@dataclass
class DataConfig(TokenizeConfig):
    path: Optional[str] = None
    """JSONL / JSON / Parquet file, a `save_to_disk` folder or a `datasets` name;
    empty (and no `mix`): the built-in synthetic task."""
    mix: Optional[list[sources.SourceConfig]] = None
    """Several sources instead of `path`: [{path, weight, split, val_split, columns}, ...];
    weight = share of the source's records used, > 1 repeats (prefopt.data.sources)."""
    columns: Columns = field(default_factory=Columns)
    """The source's column for a field of the format, e.g. {chosen: response_a}."""
    split: str = "train"
    """Split to train on, for a `datasets` source."""
    val_path: Optional[str] = None
    """Validation records; empty: `val_split` of each source, or `val_fraction` of each
    held out."""
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
    synthetic: Optional[synthetic.SyntheticConfig] = field(
        default_factory=synthetic.SyntheticConfig)
    """The built-in task, used when neither `path` nor `mix` is given; null (data=files):
    none, and a missing path is an error."""
    arithmetic: Optional[arithmetic.ArithmeticConfig] = None
    """The built-in arithmetic task (data=arithmetic), used instead of `synthetic` when
    set and neither `path` nor `mix` is given."""


def load_splits(cfg: DataConfig, fmt: str, seed: int) -> dict[str, list[Record]]:
    """Train and val records in format `fmt`, the one the objective consumes."""
    return load_sources(cfg, fmt, seed).splits


def load_sources(cfg: DataConfig, fmt: str, seed: int) -> sources.Loaded:
    """load_splits, with what each source gave (nothing for the synthetic task)."""
    source = fmt
    if cfg.unpair:
        if fmt != "unpaired":
            raise ValueError(f"data.unpair=true turns pairwise records into unpaired ones, "
                             f"but the objective consumes {fmt} records")
        source = "pairwise"
    if cfg.path is None and cfg.mix is None:
        if cfg.synthetic is None and cfg.arithmetic is None:
            raise RecordError("data", "data=files reads records from a file or dataset: give "
                              "data.path=<file>, or several with data.mix='[{path: <file>, "
                              "weight: 1.0}, ...]'")
        parse = PARSERS[source]
        task, raw_splits = ("arithmetic", arithmetic.splits(cfg.arithmetic, source)) \
            if cfg.arithmetic is not None else \
            ("synthetic", synthetic.splits(cfg.synthetic, source))
        loaded = sources.Loaded({
            name: [parse(f"{task} {name} record {i}", raw) for i, raw in enumerate(rows)]
            for name, rows in raw_splits.items()})
    else:
        loaded = sources.load(cfg, source, fmt, seed)
    if cfg.unpair:
        loaded.splits = {name: unpair(records) for name, records in loaded.splits.items()}
    return loaded


def attribute_schema(cfg: DataConfig) -> AttributeSchema:
    """The schema of the run's attributed records: `data.attributes`, or the synthetic
    task's when training on it."""
    if cfg.attributes:
        return AttributeSchema(list(cfg.attributes))
    if cfg.path is None and cfg.mix is None and cfg.synthetic is not None:
        return AttributeSchema(synthetic.attribute_specs(cfg.synthetic))
    raise ValueError(f"data.attributes: attributed records from {cfg.path or 'data.mix'} need "
                     "an attribute schema, e.g. data.attributes='[{name: quality, min: 0, "
                     "max: 4}]'")


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
        self.sources: dict[str, list[dict]] = {}
        """Per split, what each source gave: {path, split, weight, records_read, held_out,
        records_used} (prefopt.data.sources); empty for the synthetic task."""

    def setup(self, stage: str | None = None) -> None:
        if self.groups:
            return  # validate-then-fit calls setup twice; the data are the same
        encoder = Encoder(self.tokenizer, self.cfg, self.schema, self.condition)
        loaded = load_sources(self.cfg, self.fmt, self.seed)
        self.sources = loaded.sources
        for name, records in loaded.splits.items():
            groups, report = encoder.encode_all(records)
            report.sources = self.sources.get(name)  # data_report.json lists them
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
        if name == "val" and self.cfg.val_path is not None:
            return self.cfg.val_path
        if self.cfg.mix is not None:
            return ", ".join(s["path"] for s in self.sources[name])
        return self.cfg.path or "synthetic"

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
