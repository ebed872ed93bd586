"""The Lightning DataModule: records -> encoded pairs -> batches, with train/val splits."""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass, field
from typing import Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from prefopt.data import synthetic
from prefopt.data.collate import collate_pairs
from prefopt.data.records import PairwiseRecord, parse_pairwise, read_pairwise
from prefopt.data.tokenize import DataReport, EncodedPair, PairEncoder, TokenizeConfig

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
    batch_size: int = 32
    """Pairs per micro-batch (each pair is two sequences)."""
    val_batch_size: Optional[int] = None
    shuffle: bool = True
    synthetic: synthetic.SyntheticConfig = field(default_factory=synthetic.SyntheticConfig)


def _held_out(records: list[PairwiseRecord], fraction: float, seed: int
              ) -> tuple[list[PairwiseRecord], list[PairwiseRecord]]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {fraction}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(records)))
    return [records[i] for i in order[n_val:]], [records[i] for i in order[:n_val]]


def load_splits(cfg: DataConfig, seed: int) -> dict[str, list[PairwiseRecord]]:
    if cfg.path is None:
        return {name: [parse_pairwise(f"synthetic {name} record {i}", raw)
                       for i, raw in enumerate(rows)]
                for name, rows in synthetic.pairwise_splits(cfg.synthetic).items()}
    train = read_pairwise(cfg.path, cfg.split)
    if cfg.val_path is not None:
        return {"train": train, "val": read_pairwise(cfg.val_path, cfg.val_split or "train")}
    if cfg.val_split is not None:
        return {"train": train, "val": read_pairwise(cfg.path, cfg.val_split)}
    train, val = _held_out(train, cfg.val_fraction, seed)
    return {"train": train, "val": val}


class PreferenceDataModule(pl.LightningDataModule):
    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0):
        super().__init__()
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.pairs: dict[str, list[EncodedPair]] = {}
        self.reports: dict[str, DataReport] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.pairs:
            return  # validate-then-fit calls setup twice; the data are the same
        encoder = PairEncoder(self.tokenizer, self.cfg)
        for name, records in load_splits(self.cfg, self.seed).items():
            pairs, report = encoder.encode_all(records)
            if not pairs:
                raise ValueError(f"no usable {name} pairs left: {report.summary()}")
            self.pairs[name], self.reports[name] = pairs, report
            log.info("data %s: %s", name, report.summary())

    def _loader(self, name: str, batch_size: int, shuffle: bool) -> DataLoader:
        collate = functools.partial(collate_pairs, pad_id=self.tokenizer.pad_token_id)
        return DataLoader(self.pairs[name], batch_size=batch_size, shuffle=shuffle,
                          collate_fn=collate, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.cfg.batch_size, self.cfg.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.cfg.val_batch_size or self.cfg.batch_size, False)
