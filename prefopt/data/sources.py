"""Where a run's records come from: one source (`data.path`) or a weighted mixture
(`data.mix`), each read with its split and column mapping, and split into train and val.

A mixture's weight is the share of that source's training records used, as in
alignment-handbook's `dataset_mixer`: 0.25 takes a seeded quarter of them, 1 all of them,
2.5 all of them twice plus a seeded half. With n training records and weight w, a source
gives floor(w) * n + round((w - floor(w)) * n) records, the same ones for the same seed.

Validation records are never weighted: they are `data.val_path` when given; otherwise each
source gives its own, its `val_split` (or `data.val_split`) or, with neither, a seeded
held-out `data.val_fraction` of its records, taken before the weight is applied, so that
no validation record is trained on.

What each source gave is described in `Loaded.sources` ({path, split, weight,
records_read, held_out, records_used} per source and split), for data_report.json.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from prefopt.data.records import (
    FIELDS,
    Columns,
    Record,
    RecordError,
    check_columns,
    iter_raw,
    read_records,
    renamed,
)

# The fields that tell a record's format, checked in this order.
_MARKS = (("pairwise", {"chosen", "rejected"}), ("unpaired", {"completion", "label"}),
          ("ranked", {"completions", "ranks"}), ("ranked", {"answers"}),
          ("attributed", {"response", "attributes"}))


@dataclass
class SourceConfig:
    """One source of a mixture (`data.mix`); unset keys take the `data.*` value."""

    path: Optional[str] = None
    """JSONL / JSON / Parquet file, a `save_to_disk` folder or a `datasets` name."""
    weight: float = 1.0
    """Share of this source's training records used; > 1 repeats them."""
    split: Optional[str] = None
    val_split: Optional[str] = None
    columns: Columns = field(default_factory=Columns)
    """{field: column}, on top of `data.columns`."""


@dataclass
class Loaded:
    """Train and val records, and what each source gave to each split."""

    splits: dict[str, list[Record]]
    sources: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def describe_fields(fmt: str) -> str:
    return "{" + ", ".join(f for f in FIELDS[fmt] if f not in ("margin", "answers")) + "}"


def _format_of(raw) -> str | None:
    """The format a raw record is in, by its fields; None if it has none's."""
    if not isinstance(raw, dict):
        return None
    return next((fmt for fmt, fields in _MARKS if fields <= set(raw)), None)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _not_found(path: str, setting: str, exc: FileNotFoundError) -> RecordError:
    """A missing source named by the setting that gave it: `data.path`, `data.val_path`, or
    `data.mix[i]`'s field `path` (relative paths are read from the working directory)."""
    missing = exc.filename or path
    message = (f"no such file or directory {missing!r} (looked in {os.getcwd()}): give the "
               "path of an existing .jsonl, .json or .parquet file or dataset folder")
    if setting.startswith("data.mix["):
        return RecordError(setting, message, "path")
    return RecordError(setting, message)


def read(path: str, source: str, split: str, fmt: str, columns: dict[str, str],
         split_setting: str, path_setting: str = "data.path") -> list[Record]:
    """read_records, naming both formats when the file holds records of another format
    than the objective consumes (`fmt`; `source` is what is read: pairwise to unpair),
    and refusing a source with no record. `path_setting` is the setting that named `path`
    (data.path, data.val_path, data.mix[i]), named when it does not exist."""
    try:
        records = read_records(path, source, split, columns, split_setting)
    except FileNotFoundError as exc:
        raise _not_found(path, path_setting, exc) from None
    except RecordError as exc:
        try:
            where, first = next(iter_raw(path, split, split_setting))
        except (RecordError, StopIteration):
            raise exc from None
        found = _format_of(renamed(first, columns))
        if found is None or found == source:
            raise
        if found == "pairwise" and fmt == "unpaired":
            fix = "set data.unpair=true to split each pair into a desirable and an " \
                  "undesirable record"
        else:
            fix = (f"convert the data to {source} records, or choose an objective that "
                   f"consumes {found} records (prefopt-plugins lists each one's format)")
        raise RecordError(where, f"the objective consumes {source} records "
                          f"{describe_fields(source)}, but this is {_a(found)} record "
                          f"{describe_fields(found)}: {fix}") from None
    if not records:
        raise RecordError(path, f"holds no records: give a file with {source} records "
                          f"{describe_fields(source)}, one JSON object per line (.jsonl)")
    return records


def held_out(records: list[Record], fraction: float, seed: int, source: str = "data"
             ) -> tuple[list[Record], list[Record]]:
    """(train, val): a seeded `fraction` of `records` (at least one) held out."""
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


def weighted(records: list[Record], weight: float, seed: int | str) -> list[Record]:
    """floor(weight) copies of `records` and a seeded share weight - floor(weight) of them
    (in their order); see the module docstring."""
    whole = math.floor(weight)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    part = sorted(order[:round((weight - whole) * len(records))])
    return records * whole + [records[i] for i in part]


def _entries(cfg) -> list[tuple[str, SourceConfig]]:
    """(setting, source) for `data.path` or each `data.mix` entry, checked."""
    if cfg.path is not None and cfg.mix is not None:
        raise RecordError("data.path", f"{cfg.path} and data.mix both name the records; give "
                          "one: data.path=<file> for one source, data.mix for a mixture "
                          "(set data.path=null)")
    if cfg.mix is None:
        return [("data", SourceConfig(path=cfg.path))]
    if not cfg.mix:
        raise RecordError("data.mix", "lists no source: give [{path: <file>, weight: <w>}, "
                          "...]")
    entries = []
    for i, entry in enumerate(cfg.mix):
        setting = f"data.mix[{i}]"
        if isinstance(entry, dict):
            try:
                entry = SourceConfig(**entry)
            except TypeError:
                known = ", ".join(SourceConfig.__dataclass_fields__)
                raise RecordError(setting, f"has keys {sorted(entry)}; a source has the "
                                  f"keys {known}") from None
        if not entry.path:
            raise RecordError(setting, "missing: name the source's file or dataset", "path")
        weight = entry.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
                not math.isfinite(weight) or weight <= 0:
            raise RecordError(setting, f"expected a number > 0 (the share of the source's "
                              f"records used; > 1 repeats them), got {weight!r}", "weight")
        entries.append((setting, entry))
    return entries


def load(cfg, source: str, fmt: str, seed: int) -> Loaded:
    """Train and val records of `cfg` (a DataConfig with `path` or `mix`), in format
    `source` (the objective consumes `fmt`)."""
    entries = _entries(cfg)
    columns = check_columns(cfg.columns, source)
    mixed = cfg.mix is not None
    loaded = Loaded({"train": [], "val": []}, {"train": [], "val": []})
    for index, (setting, entry) in enumerate(entries):
        own = {**columns, **check_columns(entry.columns, source, f"{setting}.columns")}
        split, val_split = entry.split or cfg.split, entry.val_split or cfg.val_split
        path_setting = setting if mixed else "data.path"
        records = read(entry.path, source, split, fmt, own,
                       f"{setting}.split" if mixed and entry.split else "data.split",
                       path_setting)
        n_read, n_held_out = len(records), 0
        if cfg.val_path is None and val_split is not None:
            val = read(entry.path, source, val_split, fmt, own,
                       f"{setting}.val_split" if mixed and entry.val_split else "data.val_split",
                       path_setting)
            loaded.splits["val"] += val
            loaded.sources["val"].append({"path": entry.path, "split": val_split,
                                          "records_read": len(val), "records_used": len(val)})
        elif cfg.val_path is None:
            records, val = held_out(records, cfg.val_fraction, seed + index, entry.path)
            n_held_out = len(val)
            loaded.splits["val"] += val
            loaded.sources["val"].append({"path": entry.path, "split": split,
                                          "records_read": n_read, "held_out": len(val),
                                          "records_used": len(val)})
        # Its own stream, so the weights do not change which records were held out.
        used = weighted(records, entry.weight, seed=f"mix/{seed}/{index}")
        if not used:
            raise RecordError(setting, f"{entry.weight} of the {len(records)} training "
                              f"records of {entry.path} is none of them: raise the weight",
                              "weight")
        loaded.splits["train"] += used
        loaded.sources["train"].append({
            "path": entry.path, "split": split, "weight": entry.weight, "records_read": n_read,
            "held_out": n_held_out, "records_used": len(used)})
    if cfg.val_path is not None:
        val_split = cfg.val_split or "train"
        val = read(cfg.val_path, source, val_split, fmt, columns, "data.val_split",
                   "data.val_path")
        loaded.splits["val"] = val
        loaded.sources["val"] = [{"path": cfg.val_path, "split": val_split,
                                  "records_read": len(val), "records_used": len(val)}]
    return loaded
